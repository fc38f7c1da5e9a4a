"""The torch modules converted into openvino-genai's Phi-3-vision IRs (build side, torch).

openvino-genai's ``VLMPipeline`` (``visual_language/phi3_vision``) runs a Phi-3-vision model as four
IRs beside the tokenizer's: ``openvino_vision_embeddings_model`` (pixel_values [N, 3, 336, 336] ->
CLIP patch features [N, 576, 1024], its own image preprocessing is patched in front of it at load
time), its built-in HD transform (2x2 merge, ``sub_GN`` newlines, ``glb_GN`` from config.json),
``openvino_vision_projection_model`` ([1, L, 4096] -> [1, L, hidden]), ``openvino_text_embeddings_model``
(input_ids -> inputs_embeds) and the stateful ``openvino_language_model`` on inputs_embeds.

The HD transform is compiled into the pipeline for CLIP ViT-L's width: it asserts 576 patches of
1024 features (and 4096-wide separators). A narrower tower (C < 1024, e.g. the trained demo model's
C = 128) is carried losslessly: the vision embeddings pad each patch's features with zeros to 1024,
the separators are written zero-padded in the same layout, and the projection first gathers the
4·C real features of each merged token ((dy·2 + dx)·1024 + c, the merge's order) before the MLP.
A wider tower cannot be carried and is refused.

Only the vision tensors and the token table are read (memory-mapped), never the decoder's: the
decoder goes through the streamed ONNX route (``language_model_ir``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from ...builder.phi3v_config import Phi3VisionConfig
from ...builder.phi3v_reference import (
    CLIP_PREFIX,
    GLB_GN,
    INDEX_FILE,
    PROJECTION_PREFIX,
    SINGLE_FILE,
    SUB_GN,
    _no_init,
    _strict_problems,
)
from ...errors import ModelSourceError, UsageError

GENAI_CLIP_WIDTH = 1024  # what VLMPipeline's phi3_v HD transform is compiled for
GENAI_PATCHES = 576
EMBED_TABLE = "model.embed_tokens.weight"


def check_width(vision: Phi3VisionConfig) -> None:
    if vision.image_dim_out > GENAI_CLIP_WIDTH:
        raise UsageError(f"openvino-genai's Phi-3-vision pipeline takes CLIP features of at most {GENAI_CLIP_WIDTH}, "
                         f"this checkpoint's image tower has {vision.image_dim_out}",
                         hint="build the ONNX formats for this checkpoint")


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


class VisionEmbeddings(nn.Module):
    """pixel_values [N, 3, 336, 336] -> CLIP hidden_states[layer_idx] without the class token, zero-padded
    to [N, 576, 1024]. Only the encoder layers the feature layer needs are kept."""

    def __init__(self, clip: nn.Module, layers_run: int, width: int):
        super().__init__()
        vm = clip.vision_model
        self.embeddings, self.pre_layrnorm = vm.embeddings, vm.pre_layrnorm
        self.layers = nn.ModuleList(list(vm.encoder.layers)[:layers_run])
        self.pad = GENAI_CLIP_WIDTH - width

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.layers:
            out = layer(hidden, None)  # no mask: every patch sees every patch
            hidden = out[0] if isinstance(out, tuple) else out
        features = hidden[:, 1:]
        return nn.functional.pad(features, (0, self.pad)) if self.pad else features


class VisionProjection(nn.Module):
    """[1, L, 4·1024] merged tokens -> [1, L, hidden]: the real 4·C features gathered, then the MLP."""

    def __init__(self, mlp: nn.Module, width: int):
        super().__init__()
        self.mlp = mlp
        index = [k * GENAI_CLIP_WIDTH + c for k in range(4) for c in range(width)]
        self.register_buffer("index", torch.tensor(index, dtype=torch.int64), persistent=False)
        self.padded = width != GENAI_CLIP_WIDTH

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        x = torch.index_select(image_features, -1, self.index) if self.padded else image_features
        return self.mlp(x)


class TextEmbeddings(nn.Module):
    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Embedding.from_pretrained(table, freeze=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table(input_ids)


def padded_separator(values: torch.Tensor, width: int) -> list[float]:
    """A [.., 4·C] separator laid out as VLMPipeline's 4·1024 merged features (zeros in the padding)."""
    flat = values.reshape(4, width).numpy().astype(np.float32)
    out = np.zeros((4, GENAI_CLIP_WIDTH), dtype=np.float32)
    out[:, :width] = flat
    return out.reshape(-1).tolist()


def build_vision_modules(checkpoint: Path, vision: Phi3VisionConfig):
    """(VisionEmbeddings, VisionProjection, sub_GN list, glb_GN list) from the checkpoint, loaded strictly."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    check_width(vision)
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
    width = vision.image_dim_out
    embeddings = VisionEmbeddings(clip.eval(), vision.clip_layers_run, width).eval()
    projection = VisionProjection(mlp.eval(), width).eval()
    return embeddings, projection, padded_separator(tensors[SUB_GN], width), padded_separator(tensors[GLB_GN], width)


def build_text_embeddings(checkpoint: Path) -> TextEmbeddings:
    tensors = read_tensors(checkpoint, lambda n: n == EMBED_TABLE)
    if EMBED_TABLE not in tensors:
        raise ModelSourceError(f"{checkpoint} has no {EMBED_TABLE}")
    return TextEmbeddings(tensors[EMBED_TABLE]).eval()
