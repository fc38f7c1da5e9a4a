"""Phi-3.5-vision's image encoder in MLX (device side: mlx + numpy only): pixels → image features.

The same computation as edgeslm's fp32 torch reference (``builder/phi3v_reference.py``), from the
artifact's ``vision.safetensors`` / ``vision_config.json`` (``vision_export``):

1. only the crops an image uses (1 + h·w of its h×w grid) are run;
2. CLIP ViT: the 14-px patch "convolution" as one matmul over 14×14×3 patches, class token, position
   table, ``pre_layrnorm``, then the encoder layers up to the feature layer (``hidden_states[-2]``),
   class token dropped;
3. each crop's 24×24 patches merged 2×2 into 144 tokens of 4·C features; the sub-crops laid out as
   one 12h×12w grid, each row followed by ``sub_GN``, then ``glb_GN``, then the global crop's 12 rows
   with their ``sub_GN``;
4. ``img_projection``: Linear → GELU (erf) → Linear.

Pixels come from edgeslm's own processor (``vision/phi3v_processor``: pad, not stretch), so the
features are the reference's up to the weights' float16 rounding. On Metal the tower computes in
float16; without Metal (Linux ``mlx[cpu]``) the float16 weights are upcast and it computes in float32,
as ``model_loading`` does for the text weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BundleError, UsageError

VISION_WEIGHTS, VISION_CONFIG = "vision.safetensors", "vision_config.json"  # what vision_export writes
FORMAT_VERSION = 1
CROP_BATCH = 8  # crops per CLIP forward (bounds the attention activations)


def has_vision(artifact_dir: Path) -> bool:
    return (Path(artifact_dir) / VISION_CONFIG).is_file()


class VisionTower:
    """Load with :meth:`load`; :meth:`image_features` takes what ``vision.phi3v_processor.preprocess`` made."""

    def __init__(self, weights: dict[str, Any], config: dict[str, Any], dtype: Any):
        import mlx.core as mx

        self.mx = mx
        self.config = config
        self.dtype = dtype
        self.w = {k: v.astype(dtype) for k, v in weights.items()}
        c, p = config["clip_hidden"], config["patch_size"]
        self.patch_kernel = self.w.pop("clip.patch_embedding.weight").reshape(c, 3 * p * p).T
        mx.eval(list(self.w.values()) + [self.patch_kernel])

    @classmethod
    def load(cls, artifact_dir: Path, dtype: Any = None) -> VisionTower:
        import mlx.core as mx

        from .model_loading import metal_available

        folder = Path(artifact_dir)
        try:
            config = json.loads((folder / VISION_CONFIG).read_text(encoding="utf-8"))
            weights = mx.load(str(folder / VISION_WEIGHTS))
        except (OSError, ValueError, RuntimeError) as exc:
            raise BundleError(f"cannot load the MLX vision part of {folder}: {exc}") from None
        if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
            raise BundleError(f"{folder / VISION_CONFIG} is not an edgeslm MLX vision config of version "
                              f"{FORMAT_VERSION}", hint="rebuild the bundle with this edgeslm")
        if dtype is None:
            dtype = mx.float16 if metal_available() else mx.float32
        return cls(weights, config, dtype)

    # ---- CLIP ------------------------------------------------------------------------------------------
    def _linear(self, x: Any, name: str) -> Any:
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def _norm(self, x: Any, name: str) -> Any:
        return self.mx.fast.layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.config["clip_eps"])

    def _act(self, x: Any) -> Any:
        mx = self.mx
        if self.config["clip_act"] == "gelu":
            return _gelu(mx, x)
        return x * mx.sigmoid(1.702 * x)

    def crop_features(self, crops: Any) -> Any:
        """[M, 3, 336, 336] pixels → [M, 576, C] patch features of the configured layer."""
        mx, cfg = self.mx, self.config
        c, heads, p = cfg["clip_hidden"], cfg["clip_heads"], cfg["patch_size"]
        m, side = crops.shape[0], cfg["image_size"] // p
        x = crops.astype(self.dtype).reshape(m, 3, side, p, side, p).transpose(0, 2, 4, 1, 3, 5)
        h = x.reshape(m, side * side, 3 * p * p) @ self.patch_kernel
        cls = mx.broadcast_to(self.w["clip.class_embedding"].reshape(1, 1, c), (m, 1, c))
        h = mx.concatenate([cls, h], axis=1) + self.w["clip.position_embedding.weight"]
        h = self._norm(h, "clip.pre_layrnorm")
        length, head_dim = h.shape[1], c // heads
        for i in range(cfg["clip_layers_run"]):
            layer = f"clip.layers.{i}"
            n = self._norm(h, f"{layer}.layer_norm1")
            q, k, v = (self._linear(n, f"{layer}.{proj}_proj").reshape(m, length, heads, head_dim).transpose(0, 2, 1, 3)
                       for proj in ("q", "k", "v"))
            att = mx.fast.scaled_dot_product_attention(q, k, v, scale=head_dim ** -0.5)
            h = h + self._linear(att.transpose(0, 2, 1, 3).reshape(m, length, c), f"{layer}.out_proj")
            n = self._norm(h, f"{layer}.layer_norm2")
            h = h + self._linear(self._act(self._linear(n, f"{layer}.fc1")), f"{layer}.fc2")
        return h[:, 1:]

    # ---- HD layout and projection ---------------------------------------------------------------------
    def _merge(self, feats: Any, rows: int, cols: int) -> Any:
        """[rows·cols, 576, C] → [12·rows·(12·cols + 1), 4C]: the 2×2 merge, the crop grid, a newline per row."""
        mx = self.mx
        c = feats.shape[-1]
        side = int(round(feats.shape[1] ** 0.5))
        half = side // 2
        merged = feats.reshape(-1, half, 2, half, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, half, half, 4 * c)
        grid = merged.reshape(rows, cols, half, half, 4 * c).transpose(0, 2, 1, 3, 4).reshape(rows * half, cols * half, 4 * c)
        newline = mx.broadcast_to(self.w["sub_GN"].reshape(1, 1, 4 * c), (rows * half, 1, 4 * c))
        return mx.concatenate([grid, newline], axis=1).reshape(-1, 4 * c)

    def image_features(self, pixel_values: Any, image_sizes: Any) -> Any:
        """[total image tokens, text hidden] (an mx array in the tower's dtype), images in order.

        ``pixel_values`` [images, crops, 3, 336, 336] (global crop first, then the sub-crops row-major,
        then zero crops); ``image_sizes`` [images, 2]: each HD image's (height, width) in pixels.
        """
        mx = self.mx
        pixels = np.asarray(pixel_values)
        size = self.config["image_size"]
        if pixels.ndim != 5 or tuple(pixels.shape[2:]) != (3, size, size):
            raise UsageError(f"pixel_values has shape {list(pixels.shape)}, expected [images, crops, 3, {size}, {size}]")
        if not np.issubdtype(pixels.dtype, np.floating) or not np.isfinite(pixels).all():
            raise UsageError(f"pixel_values must be finite floats, not {pixels.dtype}"
                             + (" with NaN or inf" if np.issubdtype(pixels.dtype, np.floating) else ""))
        grids = _grids(image_sizes, pixels.shape, size)
        used = np.concatenate([pixels[i, :1 + r * c] for i, (r, c) in enumerate(grids)]).astype(np.float32)
        parts = []
        for start in range(0, used.shape[0], CROP_BATCH):
            part = self.crop_features(mx.array(used[start:start + CROP_BATCH]))
            mx.eval(part)
            parts.append(part)
        feats = mx.concatenate(parts) if len(parts) > 1 else parts[0]
        tokens, start = [], 0
        glb_gn = self.w["glb_GN"].reshape(1, -1)
        for rows, cols in grids:
            crops = feats[start:start + 1 + rows * cols]
            start += 1 + rows * cols
            tokens += [self._merge(crops[1:], rows, cols), glb_gn, self._merge(crops[:1], 1, 1)]
        x = self._linear(mx.concatenate(tokens), "projection.0")
        x = _gelu(mx, x)  # exact GELU, as torch's nn.GELU()
        out = self._linear(x, "projection.2")
        mx.eval(out)
        return out


def _gelu(mx: Any, x: Any) -> Any:
    return x * (1 + mx.erf(x * _INV_SQRT2)) / 2


_INV_SQRT2 = 0.7071067811865476  # a Python float keeps the array's dtype


def _grids(image_sizes: Any, pixel_shape: tuple[int, ...], size: int) -> list[tuple[int, int]]:
    sizes = np.asarray(image_sizes)
    if sizes.ndim != 2 or sizes.shape[1] != 2 or not np.issubdtype(sizes.dtype, np.integer):
        raise UsageError(f"image_sizes must be integers [images, 2] (height, width), not {sizes.dtype} {list(sizes.shape)}")
    if sizes.shape[0] == 0:
        raise UsageError("no images: image_sizes is empty")
    if sizes.shape[0] != pixel_shape[0]:
        raise UsageError(f"{sizes.shape[0]} image_sizes for {pixel_shape[0]} images of pixel_values")
    grids = []
    for h, w in sizes.tolist():
        if h <= 0 or w <= 0 or h % size or w % size:
            raise UsageError(f"image size {h}x{w} (height x width) is not a grid of {size}-pixel crops")
        rows, cols = h // size, w // size
        if 1 + rows * cols > pixel_shape[1]:
            raise UsageError(f"an image of {rows}x{cols} crops needs {1 + rows * cols} crops, pixel_values has "
                             f"{pixel_shape[1]}")
        grids.append((rows, cols))
    return grids
