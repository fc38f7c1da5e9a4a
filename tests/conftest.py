"""Shared fixtures: paths to ../shared/fixtures, a CLI runner, and one bundle built per test session."""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "fixtures"
DOCS_MODEL = SHARED / "phi3-docs-21m"
EVAL = SHARED / "eval"


def pytest_sessionstart(session: pytest.Session) -> None:
    if not DOCS_MODEL.is_dir():
        raise pytest.UsageError(f"the test fixtures are missing: expected {SHARED} beside the repository")


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def json(self):
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"<rc={self.returncode} stdout={self.stdout[-2000:]!r} stderr={self.stderr[-2000:]!r}>"


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600,
            input: str | None = None) -> CliResult:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "edgeslm", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout, input=input)
    return CliResult(proc)


def assert_clean_error(result: CliResult, *fragments: str) -> None:
    """A non-zero exit with one 'edgeslm: error:' line naming the problem, and no traceback."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgeslm: error:")]
    assert len(lines) == 1, result
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="session")
def built_bundle(tmp_path_factory) -> Path:
    """The docs model built for three targets that share the ONNX int4 CPU artifact."""
    out = tmp_path_factory.mktemp("build") / "docs.bundle"
    result = run_cli("build", "--target", "raspberrypi", "--target", "raspberrypi4", "--target", "cpu-x86_64",
                     "--model", str(DOCS_MODEL), "--out", str(out), "--pack",
                     "--eval-text", str(EVAL / "docs-heldout.txt"), "--eval-windows", "4", "--json")
    assert result.returncode == 0, result
    return out


@pytest.fixture()
def bundle_copy(built_bundle, tmp_path) -> Path:
    """A private copy of the session bundle that a test may damage."""
    dest = tmp_path / "copy.bundle"
    shutil.copytree(built_bundle, dest)
    return dest


def token_windows(count: int, length: int) -> list[list[int]]:
    """Consecutive windows of the held-out docs text, tokenized with the source tokenizer."""
    from tokenizers import Tokenizer

    text = (EVAL / "docs-heldout.txt").read_text()
    ids = Tokenizer.from_file(str(DOCS_MODEL / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    return [ids[i * length:(i + 1) * length] for i in range(count)]


@functools.lru_cache(maxsize=None)
def source_perplexity(count: int, length: int) -> float:
    """Perplexity of the source checkpoint (fp32, transformers) on the held-out windows."""
    import torch
    from transformers import AutoModelForCausalLM

    windows = token_windows(count, length)
    model = AutoModelForCausalLM.from_pretrained(str(DOCS_MODEL), dtype=torch.float32).eval()
    with torch.inference_mode():
        nll = sum(float(torch.nn.functional.cross_entropy(model(input_ids=torch.tensor([w])).logits[0, :-1],
                                                          torch.tensor(w[1:]), reduction="sum")) for w in windows)
    return math.exp(nll / sum(len(w) - 1 for w in windows))


def import_blocker(tmp_path: Path, *top_level: str) -> dict:
    """Environment for a subprocess in which importing the given top-level packages fails."""
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {tuple(top_level)!r}:\n"
        "            raise ImportError(f'No module named {name!r} (blocked by the test)')\n"
        "sys.meta_path.insert(0, Block())\n")
    return {"PYTHONPATH": str(blocker)}


PROMPTS = [json.loads(line)["messages"] for line in (EVAL / "chat-prompts.jsonl").read_text().splitlines() if line]


def build_for_target(tmp_path_factory, target: str, *extra: str) -> Path:
    """Build the docs model for one target, with quality measured on 4 windows of the held-out text."""
    out = tmp_path_factory.mktemp(target) / f"{target}.bundle"
    result = run_cli("build", "--target", target, "--model", str(DOCS_MODEL), "--out", str(out),
                     "--eval-text", str(EVAL / "docs-heldout.txt"), "--eval-windows", "4", *extra, "--json")
    assert result.returncode == 0, result
    return out
