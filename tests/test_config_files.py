"""targets/*.toml and recipes/*.toml: every shipped file loads and cross-references; bad files are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeslm.config.recipes import all_recipes, apply_overrides, load_recipe_file
from edgeslm.config.targets import all_targets, load_target_file, resolve_target
from edgeslm.errors import ConfigError, UnknownTargetError, UsageError
from edgeslm.registry import formats

REQUIRED_TARGETS = {"raspberrypi5", "raspberrypi4", "jetson-orin", "intel-core-ultra", "snapdragon-x-elite",
                    "snapdragon-8-gen-3", "apple-silicon", "cpu-x86_64", "cpu-arm64"}

GOOD_TARGET = """
name = "{name}"
description = "test"
os = ["linux"]
cpu_arch = "arm64"
ram_gb = [4]
formats = ["onnx-int4-cpu"]
[planning]
memory_bandwidth_gbps = 10.0
default_context_length = 2048
"""


def test_every_shipped_target_loads_and_names_known_formats():
    targets = all_targets()
    assert set(targets) >= REQUIRED_TARGETS
    for target in targets.values():
        assert target.formats, target.name
        for fmt in target.formats:
            assert fmt in formats()
        assert target.planning.default_context_length >= 256
        assert target.cpu_arch in ("x86_64", "arm64")


def test_aliases_and_preference_order():
    assert resolve_target("raspberrypi").name == "raspberrypi5"
    assert resolve_target("snapdragon-x-elite").formats[:2] == ("qnn-context", "onnx-int4-cpu")
    assert resolve_target("intel-core-ultra").formats[0] == "openvino-int4"
    assert resolve_target("jetson-orin").formats == ("onnx-int4-cuda", "onnx-int4-cpu")


def test_every_recipe_loads_and_covers_the_formats_of_every_target():
    recipes = all_recipes()
    assert "phi-3.5-mini-instruct" in recipes
    recipe = recipes["phi-3.5-mini-instruct"]
    for target in all_targets().values():
        for fmt in target.formats:
            assert fmt in recipe.formats, (target.name, fmt)
    assert recipe.formats["onnx-int4-cpu"].precision == "int4"


def test_unknown_target_suggests_close_names():
    with pytest.raises(UnknownTargetError) as info:
        resolve_target("raspberypi5")
    assert "raspberrypi5" in info.value.hint


@pytest.mark.parametrize("edit, key", [
    (lambda s: 'colour = "red"\n' + s, "colour"),
    (lambda s: s.replace('ram_gb = [4]', 'ram_gb = "4"'), "ram_gb"),
    (lambda s: s.replace('cpu_arch = "arm64"', 'cpu_arch = "mips"'), "cpu_arch"),
    (lambda s: s.replace('"onnx-int4-cpu"', '"onnx-int3-cpu"'), "formats[0]"),
    (lambda s: s.replace("default_context_length = 2048", "default_context_length = 2048\nturbo = true"),
     "planning.turbo"),
    (lambda s: s.replace('description = "test"\n', ""), "description"),
])
def test_bad_target_file_names_file_and_key(tmp_path: Path, edit, key):
    path = tmp_path / "board.toml"
    path.write_text(edit(GOOD_TARGET.format(name="board")))
    with pytest.raises(ConfigError) as info:
        load_target_file(path)
    assert "board.toml" in info.value.message
    assert f"'{key}'" in info.value.message


def test_good_target_file_loads(tmp_path: Path):
    path = tmp_path / "board.toml"
    path.write_text(GOOD_TARGET.format(name="board"))
    assert load_target_file(path).ram_gb == (4,)


def test_bad_recipe_file_names_file_and_key(tmp_path: Path):
    shipped = Path(all_recipes()["phi-3.5-mini-instruct"].source_file).read_text()
    cases = {
        "block_size = 128": ("block_size = 33", "formats.onnx-int4-cpu.block_size"),
        "accuracy_level = 4": ("accuracy_level = 4\nmystery = 1", "formats.onnx-int4-cpu.mystery"),
        "[formats.onnx-int4-cpu]": ("[formats.onnx-int9-cpu]", "formats.onnx-int9-cpu"),
    }
    for old, (new, key) in cases.items():
        path = tmp_path / "phi-3.5-mini-instruct.toml"
        path.write_text(shipped.replace(old, new, 1))
        with pytest.raises(ConfigError) as info:
            load_recipe_file(path)
        assert "phi-3.5-mini-instruct.toml" in info.value.message and f"'{key}'" in info.value.message


def test_overrides_are_typed():
    recipe = all_recipes()["phi-3.5-mini-instruct"]
    changed = apply_overrides(recipe, ["onnx-int4-cpu.block_size=64", "accuracy_level=1"], ["onnx-int4-cpu"])
    assert changed.formats["onnx-int4-cpu"].block_size == 64
    assert changed.formats["onnx-int4-cpu"].accuracy_level == 1
    assert changed.formats["onnx-int4-cuda"].accuracy_level == 4  # not being built: untouched
    for bad in ["block_size=big", "block_size=48", "onnx-int4-cpu.nope=1", "symmetric=maybe", "novalue"]:
        with pytest.raises(UsageError):
            apply_overrides(recipe, [bad], ["onnx-int4-cpu"])
