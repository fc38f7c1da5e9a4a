"""The runtime on the bundle built from the fixture: chat prompts, template ids, streaming, sampling, CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from conftest import DOCS_MODEL, EVAL, REPO, assert_clean_error, run_cli

import edgeslm

PROMPTS = [json.loads(line)["messages"] for line in (EVAL / "chat-prompts.jsonl").read_text().splitlines() if line]


@pytest.fixture(scope="module")
def llm(built_bundle):
    model = edgeslm.load(built_bundle)
    yield model
    model.close()


def test_template_gives_the_same_ids_as_transformers(llm):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(DOCS_MODEL))
    conversations = PROMPTS + [[{"role": "system", "content": "You answer briefly."},
                                {"role": "user", "content": "What is `len`?"},
                                {"role": "assistant", "content": "It returns the number of items."},
                                {"role": "user", "content": "And `max`?"}]]
    for messages in conversations:
        expected = reference.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
        assert llm.prompt_ids(messages) == list(expected), messages


def test_every_chat_prompt_is_answered_and_most_stop_at_end(llm):
    stopped = 0
    for messages in PROMPTS:
        stream = llm.stream(messages, max_new_tokens=128)
        pieces = list(stream)
        result = stream.result
        assert result.text.strip(), messages
        assert "".join(pieces) == result.text
        assert "<|end|>" not in result.text and "<|endoftext|>" not in result.text
        assert result.usage.completion_tokens <= 128
        stopped += result.finish_reason == "stop"
    assert stopped >= len(PROMPTS) // 2 + 1, stopped


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(llm):
    messages = PROMPTS[1]
    assert llm.chat(messages, max_new_tokens=24).text == llm.chat(messages, max_new_tokens=24).text
    a = llm.chat(messages, max_new_tokens=24, temperature=1.0, top_k=40, seed=11)
    b = llm.chat(messages, max_new_tokens=24, temperature=1.0, top_k=40, seed=11)
    assert a.text == b.text
    others = {llm.chat(messages, max_new_tokens=24, temperature=1.0, seed=s).text for s in (1, 2, 3)}
    assert len(others) > 1


def test_max_new_tokens_and_stop_strings(llm):
    result = llm.chat(PROMPTS[0], max_new_tokens=5)
    assert result.usage.completion_tokens == 5 and result.finish_reason == "length"
    full = llm.chat(PROMPTS[0], max_new_tokens=60).text
    word = full.split()[3]
    cut = llm.chat(PROMPTS[0], max_new_tokens=60, stop=[word])
    assert cut.finish_reason == "stop" and word not in cut.text and full.startswith(cut.text)


def test_prompt_beyond_the_context_is_refused_before_generation(built_bundle):
    long_prompt = " ".join(["word"] * 800)
    result = run_cli("run", str(built_bundle), long_prompt, "--context", "600")
    assert_clean_error(result, "the prompt has", "allows 599")


def test_run_json(built_bundle):
    result = run_cli("run", str(built_bundle), PROMPTS[0][0]["content"], "--json", "-n", "64")
    assert result.returncode == 0, result
    data = result.json()
    assert data["artifact"] == "onnx-int4-cpu" and data["device"] == "cpu"
    assert data["completion_tokens"] > 0 and data["prompt_tokens"] > 5 and data["tokens_per_s"] > 0
    assert data["time_to_first_token_s"] > 0 and data["text"]
    assert data["context_tokens"] == 4096


def test_run_streams_text(built_bundle):
    result = run_cli("run", str(built_bundle), "Explain `time.sleep(secs)`.", "-n", "40")
    assert result.returncode == 0 and len(result.stdout.strip()) > 10


def test_chat_multi_turn_reset_and_exit(built_bundle):
    script = "What is `len`?\nAnd `max`?\n/reset\nWhat does `abs` do?\n/exit\nnever read\n"
    result = run_cli("chat", str(built_bundle), "-n", "20", input=script)
    assert result.returncode == 0, result
    assert "[history cleared]" in result.stdout
    answers = [line for line in result.stdout.splitlines() if line.strip() and "history" not in line]
    assert len(answers) >= 3
    eof = run_cli("chat", str(built_bundle), "-n", "10", input="What is `len`?\n")  # Ctrl-D ends it
    assert eof.returncode == 0


def test_doctor_shows_profile_choice_and_context(built_bundle):
    result = run_cli("doctor", str(built_bundle), "--json")
    assert result.returncode == 0, result
    report = result.json()
    assert report["chosen"] == "onnx-int4-cpu"
    chosen = report["artifacts"][0]
    assert chosen["status"] == "chosen" and chosen["context_tokens"] == 4096
    assert report["host"]["physical_cores"] >= 1
    text = run_cli("doctor", str(built_bundle))
    assert "onnx-int4-cpu: chosen" in text.stdout and "prompts up to 4,095 tokens" in text.stdout
    gpu = run_cli("doctor", str(built_bundle), "--device", "gpu")
    assert gpu.returncode != 0 and "rejected" in gpu.stdout


def test_run_imports_no_build_side_packages(built_bundle):
    code = ("import sys\nfrom edgeslm.cli import main\n"
            f"rc = main(['run', {str(built_bundle)!r}, 'What is len?', '-n', '8'])\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'optimum', 'nncf', 'onnx') if m in sys.modules)\n"
            "print('HEAVY=' + ','.join(heavy))\nsys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("HEAVY="), proc.stdout


@pytest.mark.parametrize("args, fragments", [
    (["run", "{missing}", "hi"], ["does not exist"]),
    (["run", "{empty_dir}", "hi"], ["not a bundle"]),
    (["run", "{bundle}", ""], ["prompt is empty"]),
    (["run", "{bundle}", "   "], ["prompt is empty"]),
    (["run", "{bundle}", "hi", "--artifact", "nope"], ["no artifact 'nope'"]),
    (["run", "{bundle}", "hi", "--temperature", "-1"], ["temperature"]),
    (["run", "{bundle}", "hi", "--top-p", "0"], ["top_p"]),
    (["run", "{bundle}", "hi", "--top-k", "-2"], ["top_k"]),
    (["run", "{bundle}", "hi", "--max-new-tokens", "0"], ["max_new_tokens"]),
    (["run", "{bundle}", "hi", "--seed", "-5"], ["seed"]),
    (["run", "{bundle}", "hi", "--device", "npu"], ["no artifact", "--device npu"]),
])
def test_bad_input(built_bundle, tmp_path, args, fragments):
    (tmp_path / "empty").mkdir()
    values = {"missing": str(tmp_path / "missing"), "empty_dir": str(tmp_path / "empty"), "bundle": str(built_bundle)}
    assert_clean_error(run_cli(*[a.format(**values) for a in args]), *fragments)


def test_altered_file_is_refused_with_its_name(bundle_copy, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert run_cli("run", str(bundle_copy), "hi", "-n", "4", env=env).returncode == 0  # fills the cache
    config = bundle_copy / "artifacts/onnx-int4-cpu/genai_config.json"
    config.write_text(config.read_text().replace('"max_length": 4096', '"max_length": 131072'))
    result = run_cli("run", str(bundle_copy), "hi", env=env)
    assert_clean_error(result, "genai_config.json", "refusing to load")


def test_unknown_schema_version_is_refused(bundle_copy):
    path = bundle_copy / "manifest.json"
    path.write_text(path.read_text().replace('"schema_version": 3', '"schema_version": 4'))
    assert_clean_error(run_cli("run", str(bundle_copy), "hi"), "schema_version 4")


def test_readme_quickstart_builds_and_answers(tmp_path):
    block = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.S)[0]
    steps = [s.strip() for s in block.split("&&")]
    assert steps[-1].startswith("edgeslm run "), "the quickstart must end with a prompt through the runtime"
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    for step in steps:
        if not step.startswith("edgeslm "):
            continue
        import shlex
        result = run_cli(*shlex.split(step)[1:], cwd=tmp_path)
        assert result.returncode == 0, (step, result)
    assert result.stdout.strip()


def test_system_prompt_changes_the_prompt(llm, built_bundle):
    plain = llm.prompt_ids(PROMPTS[0])
    with_system = llm.prompt_ids(PROMPTS[0], system="You answer briefly.")
    assert len(with_system) > len(plain) and with_system[0] == 32006  # <|system|>
    result = run_cli("run", str(built_bundle), "What is `len`?", "--system", "You answer briefly.", "-n", "16")
    assert result.returncode == 0, result


def test_bench_reports_speed(built_bundle):
    result = run_cli("bench", str(built_bundle), "--repeats", "1", "--new-tokens", "16", "--json")
    assert result.returncode == 0, result
    data = result.json()
    assert data["artifact_id"] == "onnx-int4-cpu" and data["median_decode_tokens_per_s"] > 0
    assert 0 < data["generated_tokens"][0] <= 16 and data["prompt_tokens"] > 50
