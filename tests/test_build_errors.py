"""Bad input to 'edgeslm build': one specific line on stderr, a non-zero exit, no traceback, nothing lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import DOCS_MODEL, REPO, assert_clean_error, run_cli

from edgeslm.bundle.verify import verify_bundle


def _build(*args: str, env: dict | None = None):
    return run_cli("build", "--target", "raspberrypi", *args, env=env)


def _checkpoint_copy(tmp_path: Path, name: str = "model") -> Path:
    dest = tmp_path / name
    shutil.copytree(DOCS_MODEL, dest)
    for path in dest.iterdir():
        path.chmod(0o644)
    return dest


def test_missing_model_folder(tmp_path: Path):
    assert_clean_error(_build("--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")), "does not exist")


def test_folder_without_config(tmp_path: Path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"x")
    assert_clean_error(_build("--model", str(tmp_path / "m"), "--out", str(tmp_path / "o")), "no config.json")


@pytest.mark.parametrize("config", [
    {"architectures": ["BertModel"], "model_type": "bert"},
    {"architectures": ["LlamaForCausalLM"], "model_type": "llama"},
])
def test_unsupported_architecture(tmp_path: Path, config: dict):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    result = _build("--model", str(model), "--out", str(tmp_path / "o"))
    assert_clean_error(result, "unsupported architecture", config["architectures"][0])
    assert "Phi3ForCausalLM" in result.stderr  # says what is supported


def test_corrupt_safetensors(tmp_path: Path):
    model = _checkpoint_copy(tmp_path)
    (model / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    assert_clean_error(_build("--model", str(model), "--out", str(tmp_path / "o")),
                       "model.safetensors is not a valid safetensors file")


def test_truncated_safetensors(tmp_path: Path):
    model = _checkpoint_copy(tmp_path)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    assert_clean_error(_build("--model", str(model), "--out", str(tmp_path / "o")), "truncated")


def test_pickle_only_checkpoint_is_refused(tmp_path: Path):
    model = _checkpoint_copy(tmp_path)
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    assert_clean_error(_build("--model", str(model), "--out", str(tmp_path / "o")), "no *.safetensors")


def test_unknown_target_suggests_names(tmp_path: Path):
    result = run_cli("build", "--target", "rasberrypi", "--model", str(DOCS_MODEL), "--out", str(tmp_path / "o"))
    assert_clean_error(result, "unknown target 'rasberrypi'", "raspberrypi")


def test_target_with_a_format_no_backend_serves(tmp_path: Path):
    # A target may name a format that a backend plugin provides; without that plugin installed the build
    # stops at once, naming the target file, the format and that a plugin may be missing.
    data = tmp_path / "data"
    shutil.copytree(REPO / "targets", data / "targets")
    shutil.copytree(REPO / "recipes", data / "recipes")
    edge = data / "targets" / "raspberrypi5.toml"
    edge.write_text(edge.read_text().replace('formats = ["onnx-int4-cpu"]', 'formats = ["gguf-q4", "onnx-int4-cpu"]'))
    result = _build("--model", str(DOCS_MODEL), "--out", str(tmp_path / "o"), env={"EDGESLM_DATA_DIR": str(data)})
    assert_clean_error(result, "raspberrypi5.toml", "unknown format 'gguf-q4'", "plugin")
    assert not (tmp_path / "o").exists()


def test_existing_output_without_force(tmp_path: Path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_clean_error(_build("--model", str(DOCS_MODEL), "--out", str(out)), "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_override_value(tmp_path: Path):
    result = _build("--model", str(DOCS_MODEL), "--out", str(tmp_path / "o"), "--set", "block_size=48")
    assert_clean_error(result, "block_size", "48")


def test_offline_hub_id_says_how_to_pass_a_folder(tmp_path: Path):
    result = run_cli("build", "--target", "raspberrypi", "--out", str(tmp_path / "o"),
                     env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert_clean_error(result, "microsoft/Phi-3.5-mini-instruct", "--model DIR")


def test_out_of_disk_space(small_disk: Path):
    result = _build("--model", str(DOCS_MODEL), "--out", str(small_disk / "bundle"))
    assert_clean_error(result, "not enough disk space")
    assert list(small_disk.iterdir()) == []


def test_failed_build_leaves_previous_bundle_intact(built_bundle: Path, tmp_path: Path):
    out = tmp_path / "existing.bundle"
    shutil.copytree(built_bundle, out)
    model = _checkpoint_copy(tmp_path)
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] = 512  # the weights have 768: refused before any export
    (model / "config.json").write_text(json.dumps(config))
    result = _build("--model", str(model), "--out", str(out), "--force")
    assert_clean_error(result, "gate_up_proj.weight' has shape [1536, 256]")
    assert verify_bundle(out).ok
    leftovers = [p.name for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert leftovers == []


def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path: Path):
    # Library code does not know the command line: a hint names the library's parameter, the CLI its flag.
    from edgeslm.builder.pipeline import BuildRequest, build_bundle
    from edgeslm.cli.option_flags import flag
    from edgeslm.errors import OutputExistsError

    (tmp_path / "o").mkdir()
    with pytest.raises(OutputExistsError) as caught:
        build_bundle(BuildRequest(("raspberrypi",), str(DOCS_MODEL), tmp_path / "o"))
    assert "pass `force` to replace it, or `out` elsewhere" in caught.value.one_line()
    assert "pass --force to replace it, or --out elsewhere" in caught.value.one_line(flag)
    assert flag("overrides") == "--set" and flag("allow_quality_loss") == "--allow-quality-loss"
