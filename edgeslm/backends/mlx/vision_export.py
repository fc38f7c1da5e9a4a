"""The image side of an MLX artifact for Phi-3.5-vision: float16 vision weights + their config, streamed.

An ``mlx`` artifact that takes images holds, beside mlx-lm's quantized Phi-3 text model
(``model.safetensors``, ``config.json`` of model type ``phi3``), two files that ``vision_tower`` reads
on the device:

* ``vision.safetensors``: the CLIP tower up to the feature layer (``clip.*``; the last encoder layer and
  ``post_layernorm`` are never run, so they are not written), the MLP projection (``projection.*``)
  and the HD separators ``glb_GN`` / ``sub_GN``, all float16 (or float32 with
  ``vision_precision = "float32"``);
* ``vision_config.json``: the shapes and constants the forward needs.

Each tensor is read from the checkpoint on its own (``pread`` at its header offset, bf16 / f16 / f32
decoded with numpy), converted and appended to the output, whose header is written first: the build
holds one tensor in memory at a time and never runs the checkpoint's code. The checkpoint's vision
config is checked by ``builder.phi3v_config`` (unsupported variants are refused naming the key).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...builder.phi3v_config import (  # noqa: F401 (is_vision_checkpoint re-exported)
    CROP_SIZE,
    PATCH_SIZE,
    TOKENS_PER_CROP,
    Phi3VisionConfig,
    is_vision_checkpoint,
    parse_config,
)
from ...errors import BuildError, ModelSourceError
from ...safetensors_header import read_header
from .vision_tower import FORMAT_VERSION, VISION_CONFIG, VISION_WEIGHTS

_PREFIX = "model.vision_embed_tokens."
_CLIP = _PREFIX + "img_processor.vision_model."
_NUMPY = {"F16": np.float16, "F32": np.float32}
_OUT = {"float16": ("F16", np.float16), "float32": ("F32", np.float32)}


def needed_tensors(vision: Phi3VisionConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Artifact name → (checkpoint name, shape) of every tensor the MLX vision forward uses."""
    clip = vision.vision_config
    c, f, h = int(clip["hidden_size"]), int(clip["intermediate_size"]), vision.hidden_size
    grid = CROP_SIZE // PATCH_SIZE
    names = {
        "clip.class_embedding": ("embeddings.class_embedding", (c,)),
        "clip.patch_embedding.weight": ("embeddings.patch_embedding.weight", (c, 3, PATCH_SIZE, PATCH_SIZE)),
        "clip.position_embedding.weight": ("embeddings.position_embedding.weight", (grid * grid + 1, c)),
        "clip.pre_layrnorm.weight": ("pre_layrnorm.weight", (c,)),
        "clip.pre_layrnorm.bias": ("pre_layrnorm.bias", (c,)),
    }
    for i in range(vision.clip_layers_run):
        layer = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            names[f"clip.layers.{i}.{proj}.weight"] = (f"{layer}self_attn.{proj}.weight", (c, c))
            names[f"clip.layers.{i}.{proj}.bias"] = (f"{layer}self_attn.{proj}.bias", (c,))
        for norm in ("layer_norm1", "layer_norm2"):
            names[f"clip.layers.{i}.{norm}.weight"] = (f"{layer}{norm}.weight", (c,))
            names[f"clip.layers.{i}.{norm}.bias"] = (f"{layer}{norm}.bias", (c,))
        names[f"clip.layers.{i}.fc1.weight"] = (f"{layer}mlp.fc1.weight", (f, c))
        names[f"clip.layers.{i}.fc1.bias"] = (f"{layer}mlp.fc1.bias", (f,))
        names[f"clip.layers.{i}.fc2.weight"] = (f"{layer}mlp.fc2.weight", (c, f))
        names[f"clip.layers.{i}.fc2.bias"] = (f"{layer}mlp.fc2.bias", (c,))
    full = {k: (_CLIP + src, shape) for k, (src, shape) in names.items()}
    full.update({
        "projection.0.weight": (_PREFIX + "img_projection.0.weight", (h, 4 * c)),
        "projection.0.bias": (_PREFIX + "img_projection.0.bias", (h,)),
        "projection.2.weight": (_PREFIX + "img_projection.2.weight", (h, h)),
        "projection.2.bias": (_PREFIX + "img_projection.2.bias", (h,)),
        "glb_GN": (_PREFIX + "glb_GN", (1, 1, 4 * c)),
        "sub_GN": (_PREFIX + "sub_GN", (1, 1, 1, 4 * c)),
    })
    return full


def tower_config(vision: Phi3VisionConfig, precision: str) -> dict[str, Any]:
    clip = vision.vision_config
    act = str(clip["hidden_act"])
    if act not in ("quick_gelu", "gelu"):
        raise ModelSourceError(f"unsupported Phi-3.5-vision config: img_processor.vision_config.hidden_act = "
                               f"\"{act}\" (the MLX vision forward implements quick_gelu and gelu)")
    return {"format_version": FORMAT_VERSION, "dtype": precision, "clip_hidden": int(clip["hidden_size"]),
            "clip_heads": int(clip["num_attention_heads"]), "clip_intermediate": int(clip["intermediate_size"]),
            "clip_layers_run": vision.clip_layers_run, "clip_eps": float(clip["layer_norm_eps"]), "clip_act": act,
            "image_size": CROP_SIZE, "patch_size": PATCH_SIZE, "tokens_per_crop": TOKENS_PER_CROP,
            "text_hidden": vision.hidden_size}


class _Checkpoint:
    """Where each tensor of a (possibly sharded) safetensors checkpoint lies, read one at a time."""

    def __init__(self, source_dir: Path):
        index = source_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ModelSourceError(f"cannot read {index}: {exc}") from None
        else:
            files = ["model.safetensors"]
        self.where: dict[str, tuple[Path, int, dict[str, Any]]] = {}
        for name in files:
            path = source_dir / name
            try:
                length, header = read_header(path)
            except (OSError, ValueError) as exc:
                raise ModelSourceError(f"cannot read the safetensors header of {path}: {exc}") from None
            for tensor, info in header.items():
                self.where[tensor] = (path, 8 + length, info)

    def check(self, needed: dict[str, tuple[str, tuple[int, ...]]]) -> None:
        problems = []
        for src, shape in needed.values():
            info = self.where.get(src, (None, 0, None))[2]
            if info is None:
                problems.append(f"missing {src}")
            elif tuple(info["shape"]) != shape:
                problems.append(f"{src} has shape {tuple(info['shape'])}, expected {shape}")
            elif info["dtype"] not in ("BF16", "F16", "F32"):
                problems.append(f"{src} is {info['dtype']}, not a float tensor")
        if problems:
            shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
            raise ModelSourceError(f"the checkpoint's vision tensors do not match its config: {shown}")

    def read(self, name: str) -> np.ndarray:
        path, base, info = self.where[name]
        start, end = info["data_offsets"]
        fd = os.open(path, os.O_RDONLY)
        try:
            raw = os.pread(fd, end - start, base + start)
        finally:
            os.close(fd)
        if len(raw) != end - start:
            raise ModelSourceError(f"{path} is truncated inside {name}")
        if info["dtype"] == "BF16":
            values = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            values = np.frombuffer(raw, dtype=_NUMPY[info["dtype"]])
        return values.reshape(info["shape"])


def check_vision_checkpoint(source_dir: Path, config: dict[str, Any]) -> Phi3VisionConfig:
    """The vision config parsed and every tensor the forward needs present with its shape (headers only)."""
    vision = parse_config(config)
    tower_config(vision, "float16")
    _Checkpoint(Path(source_dir)).check(needed_tensors(vision))
    return vision


@dataclass(frozen=True)
class VisionWeights:
    bytes: int
    tensors: int
    config: dict[str, Any]


def export_vision(source_dir: Path, out_dir: Path, config: dict[str, Any], precision: str = "float16") -> VisionWeights:
    """Write ``vision.safetensors`` and ``vision_config.json`` into ``out_dir``, one tensor at a time."""
    if precision not in _OUT:
        raise BuildError(f"vision_precision {precision!r}: the MLX vision part is float16 or float32")
    vision = parse_config(config)
    settings = tower_config(vision, precision)
    needed = needed_tensors(vision)
    checkpoint = _Checkpoint(Path(source_dir))
    checkpoint.check(needed)
    dtype_name, dtype = _OUT[precision]
    item = np.dtype(dtype).itemsize
    header: dict[str, Any] = {"__metadata__": {"format": "mlx", "edgeslm": "phi3v-vision"}}
    offset = 0
    for name, (_src, shape) in needed.items():
        size = int(np.prod(shape)) * item
        header[name] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path = Path(out_dir) / VISION_WEIGHTS
    with open(path, "wb") as out:
        out.write(len(blob).to_bytes(8, "little"))
        out.write(blob)
        for src, _shape in needed.values():
            values = checkpoint.read(src).astype(dtype)
            if not np.isfinite(values).all():
                raise BuildError(f"the vision tensor {src} is not finite in {precision}",
                                 hint="use vision_precision=float32")
            out.write(np.ascontiguousarray(values).tobytes())
    (Path(out_dir) / VISION_CONFIG).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return VisionWeights(path.stat().st_size, len(needed), settings)
