"""Phi-3.5-vision's image encoder as one static graph for the HTP (build side, torch).

The graph takes ``pixel_values`` [crops, 3, 336, 336] (``crops`` = num_crops + 1, fixed at build time:
the global crop, the sub-crops row-major, then zero crops, as ``vision.phi3v_processor`` lays them out)
and gives ``crop_tokens`` [1, crops x 144, hidden]: CLIP up to the feature layer (class token dropped),
each crop's 24 x 24 patches merged 2 x 2 into 144 tokens of 4C features, then the MLP projection. The
projection works token by token, so it commutes with the HD layout: the host (``vision_layout``) picks
an image's tokens from the projected crop tokens and the two projected separators (``sub_GN`` newline,
``glb_GN``), which the build computes once in float32 (``separators``). No Gather with data-dependent
indices, no Compress, no dynamic shape reaches the NPU.

The projection runs on a [1, tokens, 4C] tensor so that torch exports its Linear layers as MatMul with
a constant weight (per-channel quantized like the decoder's), not as Gemm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...builder.phi3v_config import Phi3VisionConfig
from ...builder.phi3v_vision_tower import VisionTower, load_vision_tower
from .static_decoder import declare_opset_21

INPUT, OUTPUT = "pixel_values", "crop_tokens"


class StaticVisionEncoder(nn.Module):
    def __init__(self, tower: VisionTower, width: int, grid: int):
        super().__init__()
        self.patches, self.projection = tower.patches, tower.projection
        self.width, self.half = width, grid // 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.patches(pixel_values)  # [K, grid², C]
        crops, c, h = features.shape[0], self.width, self.half
        # rows 2i+dy, columns 2j+dx -> token (i, j) with features in (dy, dx, c) order, as the checkpoint's
        # reshape/permute over six dimensions does; four at most here (the HTP's Transpose takes up to 5)
        pairs = features.reshape(crops * h, 2, h, 2 * c).transpose(1, 2)  # [K·12 (i), 12 (j), 2 (dy), 2C]
        return self.projection(pairs.reshape(1, crops * h * h, 4 * c))


def separators(tower: VisionTower) -> np.ndarray:
    """[2, hidden] float32: the projected ``sub_GN`` (row 0) and ``glb_GN`` (row 1)."""
    with torch.no_grad():
        rows = torch.cat([tower.sub_gn.reshape(1, -1), tower.glb_gn.reshape(1, -1)])
        return tower.projection(rows).float().numpy()


def export_vision_encoder(checkpoint: Path, vision: Phi3VisionConfig, crops: int, path: Path) -> np.ndarray:
    """Export the float32 encoder graph at ``crops`` crops to ``path``; returns the projected separators."""
    tower = load_vision_tower(checkpoint, vision)
    grid = int(vision.vision_config["image_size"]) // int(vision.vision_config["patch_size"])
    module = StaticVisionEncoder(tower, vision.image_dim_out, grid).eval()
    example = torch.zeros(crops, 3, int(vision.vision_config["image_size"]), int(vision.vision_config["image_size"]))
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                          opset_version=20, dynamo=False)
    declare_opset_21(path)
    return separators(tower)
