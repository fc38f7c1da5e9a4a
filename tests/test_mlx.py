"""Apple silicon target (MLX) on the fixture model, run here with Linux ``mlx[cpu]``: export, quality,
weights, generation, selection, bad input. No Mac exists here: the Mac selection uses the recorded
MacBook host tree (Metal is what its sysctl/os files show); the engine really runs, on the CPU."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import (
    DOCS_MODEL,
    EVAL,
    PROMPTS,
    assert_clean_error,
    build_for_target,
    import_blocker,
    run_cli,
    source_perplexity,
    token_windows,
)

import edgeslm
from edgeslm.bundle.manifest import read_manifest
from edgeslm.runtime.accelerator_probe import Findings
from edgeslm.runtime.host_probe import probe_host
from edgeslm.runtime.selection import rank_artifacts

pytestmark = pytest.mark.slow  # real builds of the demo model (run by the README's test command too)

HOSTS = Path(__file__).parent / "hosts"


@pytest.fixture(scope="session")
def mlx_bundle(tmp_path_factory) -> Path:
    return build_for_target(tmp_path_factory, "apple-silicon", "--eval-window-tokens", "128")


def _export(settings, calibration: Path | None = None) -> tuple[Path, object]:
    """Run the MLX exporter as a library into a temporary folder (one variant per test)."""
    from edgeslm.builder.exporter import ExportJob, get_exporter
    from edgeslm.builder.source import load_source
    from edgeslm.builder.text_windows import calibration_text
    from edgeslm.progress import NullProgress
    from edgeslm.registry import formats

    out, work = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    spec = formats()["mlx"]
    result = get_exporter(spec).export(ExportJob(load_source(str(DOCS_MODEL)), spec, settings, out, work, 4096,
                                                 calibration_text(calibration, None, 0)), NullProgress())
    shutil.rmtree(work)
    return out, result


def _mlx_perplexity(artifact_dir: Path, windows: list[list[int]]) -> float:
    from edgeslm.backends.mlx.scoring import window_nll
    from edgeslm.builder.measured_quality import perplexity

    return perplexity(window_nll(artifact_dir, windows), windows)


def test_bundle_has_mlx_and_onnx_fallback(mlx_bundle):
    m = read_manifest(mlx_bundle)
    assert [a.id for a in m.artifacts] == ["mlx", "onnx-int4-cpu"]
    art = m.artifact("mlx")
    assert art.runtime.package == "mlx-lm" and art.quantization["bits"] == 4 and art.quantization["group_size"] == 64
    assert art.details["mlx_version"] and art.details["mlx_lm_version"].startswith("0.31")
    assert art.context.max_total_tokens == 4096  # LongRoPE short factors: capped at the original context
    names = {Path(f.path).name for f in art.files}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names
    config = json.loads((mlx_bundle / art.path / "config.json").read_text())
    assert config["rope_scaling"]["long_factor"] == config["rope_scaling"]["short_factor"]
    assert art.memory.weight_bytes == (mlx_bundle / art.path / "model.safetensors").stat().st_size


def test_mlx_perplexity_within_3_percent_of_source(mlx_bundle):
    windows = token_windows(4, 128)
    source = source_perplexity(4, 128)
    art = read_manifest(mlx_bundle).artifact("mlx")
    measured = _mlx_perplexity(mlx_bundle / art.path, windows)  # recomputed here, not read from the manifest
    assert abs(measured - source) / source < 0.03, (measured, source)
    assert abs(art.quality.artifact - measured) / measured < 1e-3 and abs(art.quality.source - source) < 1e-2


def test_plain_long_factor_rope_is_what_the_fix_avoids(mlx_bundle, tmp_path):
    # The same weights with mlx-lm's default (long factors at every length) lose far more than 3%:
    # this guards the fix itself, not just the number.
    art = read_manifest(mlx_bundle).artifact("mlx")
    broken = tmp_path / "long-factor"
    shutil.copytree(mlx_bundle / art.path, broken)
    source_cfg = json.loads((DOCS_MODEL / "config.json").read_text())
    config = json.loads((broken / "config.json").read_text())
    config["rope_scaling"]["long_factor"] = source_cfg["rope_scaling"]["long_factor"]
    (broken / "config.json").write_text(json.dumps(config))
    windows, source = token_windows(4, 128), source_perplexity(4, 128)
    assert (_mlx_perplexity(broken, windows) - source) / source > 0.2


def test_weights_have_requested_bits_and_group_size():
    import mlx.core as mx

    from edgeslm.backends.mlx.settings import MlxSettings

    out, result = _export(MlxSettings(bits=8, group_size=32))
    tensors = mx.load(str(out / "model.safetensors"))
    qkv_w, qkv_s = tensors["model.layers.0.self_attn.qkv_proj.weight"], tensors["model.layers.0.self_attn.qkv_proj.scales"]
    hidden = 256  # the fixture's input width of qkv_proj
    assert qkv_w.dtype == mx.uint32 and qkv_w.shape == (768, hidden * 8 // 32) and qkv_s.shape == (768, hidden // 32)
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 8
    assert result.quantization["bits_histogram"] == {"8": 26}  # 4 linears x 6 layers + embeddings + lm_head
    assert result.details["bits"] == 8 and result.details["group_size"] == 32
    shutil.rmtree(out)


def test_awq_with_calibration_text_stays_within_3_percent():
    from edgeslm.backends.mlx.settings import MlxSettings

    # Tiny AWQ (2 windows of 64 tokens, 4 grid points) to keep the CPU time small.
    out, result = _export(MlxSettings(method="awq", awq_samples=2, awq_sequence_length=64, awq_grid=4),
                          calibration=EVAL / "docs-heldout.txt")
    assert result.quantization["algorithm"] == "awq" and result.quantization["bits_histogram"] == {"4": 26}
    windows, source = token_windows(4, 128), source_perplexity(4, 128)
    assert abs(_mlx_perplexity(out, windows) - source) / source < 0.03
    shutil.rmtree(out)


def test_greedy_chat_stops_at_end_token(mlx_bundle):
    with edgeslm.load(mlx_bundle, artifact="mlx") as llm:
        assert llm.candidate.artifact.id == "mlx"
        result = llm.chat(PROMPTS[1], max_new_tokens=128)
    assert result.finish_reason == "stop" and result.text.strip()
    assert "<|end|>" not in result.text and result.usage.completion_tokens < 128


def test_mlx_and_onnx_engines_agree_on_the_template(mlx_bundle):
    with edgeslm.load(mlx_bundle, artifact="mlx") as mlx_llm, edgeslm.load(mlx_bundle, artifact="onnx-int4-cpu") as ort:
        assert mlx_llm.prompt_ids(PROMPTS[1]) == ort.prompt_ids(PROMPTS[1])


def test_selection_on_recorded_mac_and_on_this_linux_host(mlx_bundle):
    m = read_manifest(mlx_bundle)
    mac = probe_host(HOSTS / "macbook-m2", findings=Findings(packages={"mlx-lm": "0.31.3",
                                                                        "onnxruntime-genai": "0.18.0"}))
    ranked = rank_artifacts(m, mac)
    assert (ranked.chosen.artifact.id, ranked.chosen.device) == ("mlx", "gpu")
    here = rank_artifacts(m, probe_host())
    assert here.chosen.artifact.id == "onnx-int4-cpu"
    assert any("only on Apple silicon" in r.reason for r in here.rejected if r.artifact_id == "mlx")


def test_missing_mlx_names_the_extra(tmp_path, mlx_bundle):
    env = import_blocker(tmp_path, "mlx", "mlx_lm")
    result = run_cli("build", "--target", "apple-silicon", "--model", str(DOCS_MODEL), "--out", str(tmp_path / "o"),
                     env=env)
    assert_clean_error(result, "MLX exporter", "edgeslm[build-mlx]")
    assert not (tmp_path / "o").exists()
    result = run_cli("run", str(mlx_bundle), "hello", "--artifact", "mlx", env=env)
    assert_clean_error(result, "mlx-lm", "edgeslm[mlx]")


def test_mlx_for_a_target_without_it(tmp_path, built_bundle):
    result = run_cli("build", "--target", "raspberrypi", "--model", str(DOCS_MODEL), "--out", str(tmp_path / "o"),
                     "--set", "mlx.bits=8")
    assert_clean_error(result, "format 'mlx' is not built", "onnx-int4-cpu", "apple-silicon")
    result = run_cli("run", str(built_bundle), "hello", "--artifact", "mlx")
    assert_clean_error(result, "mlx")


def test_awq_without_calibration_text_uses_the_builtin_one():
    from edgeslm.backends.mlx.settings import MlxSettings

    out, result = _export(MlxSettings(method="awq", awq_samples=2, awq_sequence_length=64, awq_grid=4))
    assert result.quantization["algorithm"] == "awq"
    assert result.quantization["calibration_text"] == "edgeslm:calibration.txt"
    shutil.rmtree(out)
