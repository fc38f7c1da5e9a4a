"""Fresh clones, default builds that measure quality, the quality limit, odd layer widths, no debris."""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DOCS_MODEL, EVAL, REPO, assert_clean_error, random_phi3_checkpoint, run_cli

from edgeslm.config.targets import all_targets


def test_fresh_clone_collects_every_test_with_nothing_beside_it(tmp_path):
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "alone" / "edgeslm"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    assert sorted(p.name for p in clone.parent.iterdir()) == ["edgeslm"]  # nothing beside the clone
    sibling = "/".join(("..", "shared"))  # spelled so that this file does not match its own search
    grep = subprocess.run(["git", "grep", "-l", "-F", "-e", sibling, "--", "tests", "benchmarks", ".ci"],
                          cwd=clone, capture_output=True, text=True)
    assert grep.stdout.strip() == "", grep.stdout
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                               cwd=clone, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "PYTHONPATH": str(clone)})
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    count = int(collected.stdout.strip().splitlines()[-1].split()[0])
    here = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert count == int(here.stdout.strip().splitlines()[-1].split()[0]) and count > 100


@pytest.mark.slow
def test_default_build_for_every_target_measures_every_artifact(default_bundle):
    manifest = json.loads((default_bundle / "manifest.json").read_text())
    assert manifest["schema_version"] == 3 and manifest["warnings"] == []
    assert set(manifest["targets"]) == set(all_targets())
    formats = {f for t in all_targets().values() for f in t.formats}
    assert {a["id"] for a in manifest["artifacts"]} == formats
    for art in manifest["artifacts"]:
        q = art["quality"]
        assert q["dataset"] == "edgeslm:evaluation.txt" and (q["windows"], q["window_tokens"]) == (4, 512), art["id"]
        assert len(q["dataset_sha256"]) == 64
        assert math.isfinite(q["source"]) and math.isfinite(q["artifact"])
        assert 0 < q["kl_divergence"] < 0.5, (art["id"], q)  # KL is positive for a quantized artifact
        assert q["within_limit"] and not q["allowed_loss"] and q["max_relative_change"] == 0.05
        assert q["relative_change"] <= 0.05
    sources = {a["quality"]["source"] for a in manifest["artifacts"]}
    assert len(sources) == 1  # one source reference for every artifact, on the same windows
    cuda = next(a for a in manifest["artifacts"] if a["id"] == "onnx-int4-cuda")
    assert cuda["quality"]["scored_on"] in ("cpu", "cuda")  # no GPU on this build host: the same graph on the CPU
    qnn = next(a for a in manifest["artifacts"] if a["id"] == "qnn-context")
    assert qnn["quantization"]["calibration_text"] == "edgeslm:calibration.txt"


def test_builtin_texts_ship_in_the_package_with_their_licence():
    from edgeslm.builder.text_windows import BUILTIN_CALIBRATION, BUILTIN_EVALUATION

    folder = BUILTIN_EVALUATION.parent
    assert folder.parent.name == "edgeslm"  # inside the package, so the wheel carries it
    assert "CC BY-SA" in (folder / "README.md").read_text()
    evaluation, calibration = BUILTIN_EVALUATION.read_text(), BUILTIN_CALIBRATION.read_text()
    assert calibration.count("<|user|>") > 100 and "<|assistant|>" in calibration
    titles = lambda text, mark: {line.strip("= ") for line in text.splitlines() if line.startswith(mark)}  # noqa: E731
    eval_titles = titles(evaluation, "= ")
    assert eval_titles and not any(f"about {t}" in calibration or f"({t})" in calibration for t in eval_titles)


def _data_dir_with_limit(tmp_path: Path, limit: float) -> dict:
    """EDGESLM_DATA_DIR with the shipped targets and a recipe whose quality limit is ``limit``."""
    data = tmp_path / "data"
    shutil.copytree(REPO / "targets", data / "targets")
    (data / "recipes").mkdir(parents=True)
    text = (REPO / "recipes" / "phi-3.5-mini-instruct.toml").read_text()
    assert "max_perplexity_increase = 0.05" in text
    (data / "recipes" / "phi-3.5-mini-instruct.toml").write_text(
        text.replace("max_perplexity_increase = 0.05", f"max_perplexity_increase = {limit}"))
    return {"EDGESLM_DATA_DIR": str(data)}


def test_artifact_over_the_quality_limit_fails_the_build_and_leaves_only_logs(tmp_path):
    # A test-only recipe with a limit of +0%: int4 on the in-domain docs text is always a little worse.
    env = _data_dir_with_limit(tmp_path, 0.0)
    out = tmp_path / "o" / "docs.bundle"
    args = ("build", "--target", "raspberrypi", "--model", str(DOCS_MODEL), "--out", str(out),
            "--eval-text", str(EVAL / "docs-heldout.txt"))
    result = run_cli(*args, env=env)
    assert_clean_error(result, "onnx-int4-cpu: perplexity", "against the source's", "limit of +0%",
                       "--allow-quality-loss")
    assert result.returncode == 18 and not out.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["docs.bundle.logs"]  # no .partial-*/.work-* left
    assert [p.suffix for p in (out.parent / "docs.bundle.logs").iterdir()] == [".log"]

    kept = run_cli(*args, "--allow-quality-loss", "--json", env=env)
    assert kept.returncode == 0, kept
    manifest = json.loads((out / "manifest.json").read_text())
    q = manifest["artifacts"][0]["quality"]
    assert q["allowed_loss"] and not q["within_limit"] and q["relative_change"] > 0
    assert "kept with --allow-quality-loss" in manifest["warnings"][0]
    assert sorted(p.name for p in out.parent.iterdir()) == ["docs.bundle"]  # the old failure's logs went too


def test_no_eval_skips_with_a_warning_in_the_manifest(tmp_path):
    out = tmp_path / "noeval.bundle"
    result = run_cli("build", "--target", "raspberrypi", "--model", str(DOCS_MODEL), "--out", str(out), "--no-eval")
    assert result.returncode == 0, result
    assert "quality not measured" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifacts"][0]["quality"] is None
    assert manifest["warnings"] == ["quality not measured: built with --no-eval; no artifact was checked against "
                                    "its source"]


@pytest.fixture(scope="module")
def odd_width_model(tmp_path_factory) -> Path:
    """Random Phi-3 with hidden size 192 (3 heads of 64): group size 128 does not divide it."""
    return random_phi3_checkpoint(tmp_path_factory.mktemp("odd") / "hidden192", hidden_size=192,
                                  num_attention_heads=3, num_key_value_heads=3, intermediate_size=512,
                                  num_hidden_layers=2)


@pytest.mark.parametrize("target, setting, words", [
    ("intel-core-ultra", None, ("layer width 192", "group_size 128", "--set openvino-int4.group_size=-1")),
    ("intel-core-ultra", "openvino-int4.devices=[\"GPU\",\"CPU\"]",
     ("layer width 192", "group_size 128", "--set openvino-int4.group_size=64")),
    ("apple-silicon", "mlx.group_size=128", ("layer width 192", "mlx group_size 128", "--set mlx.group_size=64")),
])
def test_group_size_that_does_not_divide_a_layer_is_refused_before_exporting(tmp_path, odd_width_model, target,
                                                                             setting, words):
    extra = ("--set", setting) if setting else ()
    result = run_cli("build", "--target", target, "--model", str(odd_width_model), "--out", str(tmp_path / "o"),
                     *extra)
    assert_clean_error(result, *words)
    assert "nncf" not in result.stderr.lower() and not (tmp_path / "o").exists()
    assert list(tmp_path.iterdir()) == []  # refused before any folder was made


def test_odd_widths_build_with_the_suggested_group_size_and_onnx_pads_its_blocks(tmp_path, odd_width_model):
    # ONNX MatMulNBits pads the last block of a row, so block 128 over width 192 works as it is.
    # Channel-wise OpenVINO weights come from the optimum-intel exporter (onnx-streaming makes groups only).
    result = run_cli("build", "--target", "intel-core-ultra", "--model", str(odd_width_model), "--out",
                     str(tmp_path / "o"), "--no-eval", "--set", "openvino-int4.group_size=-1",
                     "--set", "openvino-int4.exporter=optimum-intel", "--set", "onnx-int4-cpu.block_size=128",
                     "--json")
    assert result.returncode == 0, result
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert {a["id"] for a in manifest["artifacts"]} == {"openvino-int4", "onnx-int4-cpu"}


def _start_build(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeslm", "build", "--target", "raspberrypi", "--model",
                             str(DOCS_MODEL), "--out", str(out), "--force"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _wait_for_work_files(out: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if any(p.is_file() for w in out.parent.glob(f".{out.name}.work-*") for p in w.iterdir()):
            return
        time.sleep(0.2)
    raise AssertionError(f"the build made no work files (rc={proc.poll()})")


def test_killed_build_leaves_debris_that_the_next_build_removes_and_nothing_else(tmp_path):
    out = tmp_path / "k.bundle"
    proc = _start_build(out)
    _wait_for_work_files(out, proc)
    proc.kill()
    proc.wait()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert any(".partial-" in n for n in leftovers) and any(".work-" in n for n in leftovers), leftovers
    # A build of the same bundle that is still running (its lock held), and folders that are not ours.
    live_lock = tmp_path / ".k.bundle.build-777-live.lock"
    (tmp_path / ".k.bundle.partial-777-live").mkdir()
    (tmp_path / ".other.bundle.partial-1-x").mkdir()
    (tmp_path / "k.bundle.partial-notours").mkdir()
    with open(live_lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        result = run_cli("build", "--target", "raspberrypi", "--model", str(DOCS_MODEL), "--out", str(out),
                         "--no-eval")
    assert result.returncode == 0, result
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "k.bundle", ".k.bundle.build-777-live.lock", ".k.bundle.partial-777-live", ".other.bundle.partial-1-x",
        "k.bundle.partial-notours"])


def test_terminated_build_cleans_up_at_once(tmp_path):
    out = tmp_path / "t.bundle"
    proc = _start_build(out)
    _wait_for_work_files(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in stderr
    names = [p.name for p in tmp_path.iterdir()]
    assert all(".partial-" not in n and ".work-" not in n and ".lock" not in n for n in names), names
    assert "t.bundle" not in names
