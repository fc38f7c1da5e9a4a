"""Bad checkpoints and a full disk against the streaming ONNX exporter: one clear line, no half bundle."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import DOCS_MODEL, assert_clean_error, run_cli

from edgeslm.errors import BuildError, DiskSpaceError

Raw = tuple[str, list[int], bytes]  # dtype, shape, data


def rewrite_checkpoint(dest: Path, change: Callable[[str, Raw], Raw | None]) -> Path:
    """A copy of the demo model whose tensors went through ``change`` (None drops one)."""
    shutil.copytree(DOCS_MODEL, dest)
    path = dest / "model.safetensors"
    blob = path.read_bytes()
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + length])
    meta = header.pop("__metadata__", None)
    data, out_header, offset = [], {}, 0
    for name, info in header.items():
        start, end = info["data_offsets"]
        changed = change(name, (info["dtype"], info["shape"], blob[8 + length + start:8 + length + end]))
        if changed is None:
            continue
        dtype, shape, raw = changed
        out_header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data.append(raw)
        offset += len(raw)
    if meta is not None:
        out_header["__metadata__"] = meta
    encoded = json.dumps(out_header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(data))
    return dest


def build(model: Path, out: Path):
    return run_cli("build", "--target", "raspberrypi5", "--model", str(model), "--out", str(out), "--no-eval")


def assert_no_bundle(out: Path) -> None:
    assert not out.exists()
    left = [p.name for p in out.parent.iterdir() if p.name.startswith(out.name)]
    assert left in ([], [f"{out.name}.logs"]), left  # no partial/work folders; only the exporter's log, if any
    if left:
        assert [p.suffix for p in (out.parent / left[0]).iterdir()] == [".log"]


def test_missing_tensor_is_refused_before_any_work(tmp_path: Path):
    model = rewrite_checkpoint(tmp_path / "m", lambda name, raw: None if name == "model.layers.3.mlp.down_proj.weight"
                               else raw)
    result = build(model, tmp_path / "out")
    assert_clean_error(result, "no tensor 'model.layers.3.mlp.down_proj.weight'")
    assert "Source reference" not in result.stderr  # refused before the quality reference and the export
    assert_no_bundle(tmp_path / "out")


def test_unhandled_dtype_is_refused_before_any_work(tmp_path: Path):
    def to_f64(name: str, raw: Raw) -> Raw:
        if name != "model.layers.2.self_attn.o_proj.weight":
            return raw
        values = (np.frombuffer(raw[2], dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        return "F64", raw[1], values.astype(np.float64).tobytes()

    result = build(rewrite_checkpoint(tmp_path / "m", to_f64), tmp_path / "out")
    assert_clean_error(result, "model.layers.2.self_attn.o_proj.weight", "F64", "BF16")
    assert_no_bundle(tmp_path / "out")


def test_shape_that_does_not_match_the_config_is_refused(tmp_path: Path):
    model = rewrite_checkpoint(tmp_path / "m", lambda name, raw: raw)
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] = 512  # the weights have 768
    (model / "config.json").write_text(json.dumps(config))
    result = build(model, tmp_path / "out")
    assert_clean_error(result, "gate_up_proj.weight", "[1536, 256]", "[1024, 256]")
    assert_no_bundle(tmp_path / "out")


def test_corrupt_values_found_mid_stream_leave_no_bundle(tmp_path: Path):
    def poison(name: str, raw: Raw) -> Raw:
        if name != "model.layers.5.mlp.down_proj.weight":
            return raw
        values = bytearray(raw[2])
        values[100:102] = struct.pack("<H", 0x7FC0)  # a bf16 NaN
        return raw[0], raw[1], bytes(values)

    result = build(rewrite_checkpoint(tmp_path / "m", poison), tmp_path / "out")
    assert_clean_error(result, "model.layers.5.mlp.down_proj.weight", "NaN")
    assert_no_bundle(tmp_path / "out")


def test_shard_truncated_after_the_export_started(tmp_path: Path):
    from edgeslm.backends.onnx_genai.checkpoint_tensors import CheckpointTensors

    model = rewrite_checkpoint(tmp_path / "m", lambda name, raw: raw)
    tensors = CheckpointTensors(model)  # indexed while the file was whole
    assert tensors.fp32("model.layers.0.input_layernorm.weight").shape == (256,)
    weights = model / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    last = max(tensors.entries, key=lambda name: tensors.entries[name].end)  # its bytes are gone now
    with pytest.raises(BuildError, match="model.safetensors is truncated"):
        tensors.fp32(last)
    tensors.close()


def test_disk_full_while_writing_external_data(small_disk: Path, tmp_path: Path):
    # A real full disk (a 12 MB tmpfs; the artifact needs ~58 MB), hit while the tensors are written:
    # the free-space check runs earlier in the pipeline, so the exporter is called directly here.
    from edgeslm.backends.onnx_genai.exporter import OnnxExporter
    from edgeslm.backends.onnx_genai.settings import OnnxSettings
    from edgeslm.builder.exporter import ExportJob
    from edgeslm.builder.source import load_source
    from edgeslm.builder.text_windows import calibration_text
    from edgeslm.progress import NullProgress
    from edgeslm.registry import get_format

    out = small_disk / "artifact"
    out.mkdir()
    job = ExportJob(load_source(str(DOCS_MODEL)), get_format("onnx-int4-cpu"), OnnxSettings(), out, tmp_path, 4096,
                    calibration_text(None, None, 0))
    with pytest.raises(DiskSpaceError) as caught:
        OnnxExporter().export(job, NullProgress())
    assert "out of disk space while writing artifact/model.onnx.data" in caught.value.one_line()
    assert not (out / "model.onnx").exists()  # the writer's temporary data file is gone too
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) == 0
