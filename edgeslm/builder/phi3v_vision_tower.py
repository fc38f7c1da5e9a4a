"""Phi-3.5-vision's image tower in torch, from the checkpoint's vision tensors only (build side).

What the exporters that convert the vision part from torch modules share (OpenVINO's IRs, the QNN
encoder graph): the checkpoint's ``model.vision_embed_tokens.*`` tensors read memory-mapped (never the
decoder's, so a 4.2B checkpoint costs ~1.2 GB here, not 17 GB), loaded strictly into transformers'
``CLIPVisionModel`` (a plain CLIP ViT: no checkpoint code) and the MLP projection, and
:class:`ClipPatchFeatures`, CLIP up to the feature layer with the class token dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..errors import ModelSourceError
from .phi3v_config import Phi3VisionConfig
from .phi3v_reference import CLIP_PREFIX, GLB_GN, INDEX_FILE, PROJECTION_PREFIX, SINGLE_FILE, SUB_GN, _no_init, _strict_problems


def read_tensors(checkpoint: Path, wanted) -> dict[str, torch.Tensor]:
    """The tensors whose names ``wanted(name)`` accepts, as float32 (memory-mapped reads)."""
    index = checkpoint / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    else:
        with safe_open(str(checkpoint / SINGLE_FILE), "pt") as f:
            weight_map = {name: SINGLE_FILE for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    files: dict[str, list[str]] = {}
    for name, file in weight_map.items():
        if wanted(name):
            files.setdefault(file, []).append(name)
    out = {}
    for file, names in files.items():
        with safe_open(str(checkpoint / file), "pt") as f:
            for name in names:
                out[name] = f.get_tensor(name).float()
    return out


class ClipPatchFeatures(nn.Module):
    """pixel_values [N, 3, 336, 336] -> CLIP hidden_states[layer_idx] without the class token [N, 576, C].
    Only the encoder layers the feature layer needs are kept."""

    def __init__(self, clip: nn.Module, layers_run: int):
        super().__init__()
        vm = clip.vision_model
        self.embeddings, self.pre_layrnorm = vm.embeddings, vm.pre_layrnorm
        self.layers = nn.ModuleList(list(vm.encoder.layers)[:layers_run])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.layers:
            out = layer(hidden, None)  # no mask: every patch sees every patch
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden[:, 1:]


@dataclass
class VisionTower:
    patches: ClipPatchFeatures
    projection: nn.Module  # [.., 4C] -> [.., hidden]: Linear, GELU (erf), Linear
    sub_gn: torch.Tensor  # [1, 1, 1, 4C] newline after each row of merged tokens
    glb_gn: torch.Tensor  # [1, 1, 4C] between the sub-crops and the global crop


def load_vision_tower(checkpoint: Path, vision: Phi3VisionConfig) -> VisionTower:
    """The image tower and projection of a Phi-3.5-vision checkpoint, loaded strictly (float32, eval)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tensors = read_tensors(checkpoint, lambda n: n.startswith(CLIP_PREFIX) or n.startswith(PROJECTION_PREFIX)
                           or n in (GLB_GN, SUB_GN))
    clip_t = {n[len(CLIP_PREFIX):]: t for n, t in tensors.items() if n.startswith(CLIP_PREFIX)}
    proj_t = {n[len(PROJECTION_PREFIX):]: t for n, t in tensors.items() if n.startswith(PROJECTION_PREFIX)}
    c, hidden = vision.merged_dim, vision.hidden_size
    with _no_init():
        clip = CLIPVisionModel(CLIPVisionConfig(**vision.vision_config, attn_implementation="eager"))
        mlp = nn.Sequential(nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    problems = _strict_problems(clip, clip_t, CLIP_PREFIX) + _strict_problems(mlp, proj_t, PROJECTION_PREFIX)
    problems += [f"missing {n}" for n in (GLB_GN, SUB_GN) if n not in tensors]
    if problems:
        raise ModelSourceError(f"{checkpoint} does not match its Phi-3.5-vision config: {'; '.join(problems[:6])}")
    clip.load_state_dict(clip_t, strict=True, assign=True)
    mlp.load_state_dict(proj_t, strict=True, assign=True)
    return VisionTower(ClipPatchFeatures(clip.eval(), vision.clip_layers_run).eval(), mlp.eval(),
                       tensors[SUB_GN], tensors[GLB_GN])
