"""``pip install 'edgeslm[build-onnx]'`` builds and measures ONNX artifacts with neither torch nor transformers.

A real, fresh virtual environment (packages from the package index, edgeslm from this checkout), then a
real ``edgeslm build`` in it: the streaming exporter writes the artifact and the quality reference is
the unquantized streamed export run by onnxruntime one layer at a time (``onnx-fp32-layerwise``). Its
source perplexity must equal the torch reference's (computed here, where torch is installed).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DOCS_MODEL, EVAL, REPO

from edgeslm.builder.measured_quality import source_window_nll
from edgeslm.builder.text_windows import BuildText

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def torch_free_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "build-onnx"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    proc = subprocess.run([*pip, f"{REPO}[build-onnx]"], capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0 and "Could not find a version" in proc.stderr + proc.stdout:
        pytest.skip(f"the package index is not reachable: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


def test_build_onnx_extra_pulls_neither_torch_nor_transformers(torch_free_venv: Path):
    listed = subprocess.run([str(torch_free_venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                            check=True, capture_output=True, text=True).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"onnx-ir", "onnxruntime", "onnxruntime-genai", "edgeslm"} <= names
    assert not names & {"torch", "transformers", "optimum", "safetensors"}, names


def test_torch_free_build_measures_quality_with_the_onnx_reference(torch_free_venv: Path, tmp_path: Path):
    out = tmp_path / "docs.bundle"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([str(torch_free_venv / "bin" / "edgeslm"), "build", "--target", "raspberrypi5", "--model",
                           str(DOCS_MODEL), "--out", str(out), "--eval-text", str(EVAL / "docs-heldout.txt"),
                           "--eval-windows", "2", "--json"], capture_output=True, text=True, env=env, timeout=900,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    artifact = manifest["artifacts"][0]
    quality = artifact["quality"]
    assert artifact["format"] == "onnx-int4-cpu" and artifact["quantization"]["exporter"] == "streaming"
    assert quality["reference"] == "onnx-fp32-layerwise" and quality["within_limit"]
    assert "torch" not in manifest["provenance"]["packages"] or manifest["provenance"]["packages"]["torch"] in (
        None, "not installed")
    # the same windows through the torch reference, here
    windows = BuildText(EVAL / "docs-heldout.txt", "--eval-text").windows(DOCS_MODEL / "tokenizer.json", 2, 512)
    nll = source_window_nll(DOCS_MODEL, windows)
    torch_ppl = math.exp(sum(nll) / sum(len(w) - 1 for w in windows))
    assert quality["source"] == pytest.approx(torch_ppl, rel=1e-4)
