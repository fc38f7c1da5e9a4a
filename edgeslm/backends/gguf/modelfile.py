"""The Ollama ``Modelfile`` written beside the GGUF: ``ollama create NAME -f Modelfile`` on the device.

Ollama renders prompts with its own Go template, not the checkpoint's Jinja one, so a GGUF imported
without a matching TEMPLATE and stop parameters runs Phi-3.5 as plain text completion and it never
stops (ollama issue #6474). ``TEMPLATE`` below is the Phi-3 chat format; ``phi3_prompt`` is the same
layout in Python, which the build compares with the checkpoint's own chat template (rendered by the
runtime's Jinja settings) on probe conversations before it writes the Modelfile; tests/test_gguf.py
renders ``TEMPLATE`` with a Go-template renderer and checks it against edgeslm's chat template.
"""

from __future__ import annotations

from pathlib import Path

# {{- ...}} trims the whitespace before it; an empty system message is skipped, as the Jinja template does
TEMPLATE = ('{{- range .Messages }}{{ if or (ne .Role "system") .Content }}<|{{ .Role }}|>\n'
            '{{ .Content }}<|end|>\n'
            '{{ end }}{{ end }}<|assistant|>\n')
STOP_STRINGS = ("<|end|>", "<|endoftext|>", "<|assistant|>")
PROBES = (
    [{"role": "user", "content": "What does os.path.join do?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "One?"}, {"role": "assistant", "content": "1"}, {"role": "user", "content": "Two?"}],
)


def phi3_prompt(messages: list[dict[str, str]]) -> str:
    """What ``TEMPLATE`` renders for a conversation that asks for the assistant's next turn."""
    turns = [f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages if m["role"] != "system" or m["content"]]
    return "".join(turns) + "<|assistant|>\n"


def template_problem(chat_template) -> str:
    """'' when the checkpoint's chat template renders every probe as ``phi3_prompt`` does, else why not."""
    for messages in PROBES:
        try:
            rendered = chat_template.render(messages, add_generation_prompt=True)
        except Exception as exc:  # a template that refuses a probe (e.g. no system role) is not Phi-3's
            return f"the chat template refuses a probe conversation ({type(exc).__name__}: {exc})"
        if rendered != phi3_prompt(messages):
            return f"the chat template is not the Phi-3 format (it renders {rendered[:60]!r} ...)"
    return ""


def modelfile_text(gguf_name: str, num_ctx: int) -> str:
    lines = ["# Ollama: ollama create NAME -f Modelfile  (written by edgeslm; the template is Phi-3's chat format)",
             f"FROM ./{gguf_name}", f'TEMPLATE """{TEMPLATE}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in STOP_STRINGS]
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def write_modelfile(folder: Path, gguf_name: str, num_ctx: int) -> Path:
    path = folder / "Modelfile"
    path.write_text(modelfile_text(gguf_name, num_ctx), encoding="utf-8")
    return path


def read_template(modelfile: str) -> str:
    """The TEMPLATE of a Modelfile written by ``modelfile_text``."""
    return modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
