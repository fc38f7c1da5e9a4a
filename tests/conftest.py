"""Shared fixtures: paths to ../shared/fixtures, a CLI runner, and one bundle built per test session."""

from __future__ import annotations

import json
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
