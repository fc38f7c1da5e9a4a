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

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...builder.phi3v_config import Phi3VisionConfig
from ...builder.phi3v_vision_tower import ClipPatchFeatures, load_vision_tower, read_tensors
from ...errors import ModelSourceError, UsageError

GENAI_CLIP_WIDTH = 1024  # what VLMPipeline's phi3_v HD transform is compiled for
GENAI_PATCHES = 576
EMBED_TABLE = "model.embed_tokens.weight"


def check_width(vision: Phi3VisionConfig) -> None:
    if vision.image_dim_out > GENAI_CLIP_WIDTH:
        raise UsageError(f"openvino-genai's Phi-3-vision pipeline takes CLIP features of at most {GENAI_CLIP_WIDTH}, "
                         f"this checkpoint's image tower has {vision.image_dim_out}",
                         hint="build the ONNX formats for this checkpoint")


class VisionEmbeddings(nn.Module):
    """pixel_values [N, 3, 336, 336] -> CLIP patch features (``ClipPatchFeatures``), zero-padded to [N, 576, 1024]."""

    def __init__(self, patches: ClipPatchFeatures, width: int):
        super().__init__()
        self.patches = patches
        self.pad = GENAI_CLIP_WIDTH - width

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.patches(pixel_values)
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
    check_width(vision)
    tower = load_vision_tower(checkpoint, vision)
    width = vision.image_dim_out
    embeddings = VisionEmbeddings(tower.patches, width).eval()
    projection = VisionProjection(tower.projection, width).eval()
    return embeddings, projection, padded_separator(tower.sub_gn, width), padded_separator(tower.glb_gn, width)


def build_text_embeddings(checkpoint: Path) -> TextEmbeddings:
    tensors = read_tensors(checkpoint, lambda n: n == EMBED_TABLE)
    if EMBED_TABLE not in tensors:
        raise ModelSourceError(f"{checkpoint} has no {EMBED_TABLE}")
    return TextEmbeddings(tensors[EMBED_TABLE]).eval()
