"""The vision and embedding parts of a Phi-3.5-vision ONNX artifact, streamed from the checkpoint.

A ``phi3v`` artifact is three graphs onnxruntime-genai runs in turn: ``vision.onnx`` (pixels →
image features, ``vision_graph``), ``embedding.onnx`` (ids + image features → embeddings,
``embedding_graph``) and ``text.onnx`` (the Phi-3 decoder on ``inputs_embeds``, the streaming
exporter's). Each is written one tensor at a time like the decoder, so the vision build needs no more
memory than the text one. The checkpoint's vision config is read by ``builder.phi3v_config``, which
refuses variants edgeslm does not implement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...builder.phi3v_config import Phi3VisionConfig, is_vision_checkpoint, parse_config  # noqa: F401 (re-exported)
from ...errors import BuildError
from .checkpoint_tensors import CheckpointTensors
from .embedding_graph import EmbeddingPlan, build_embedding
from .lazy_weights import LazyWeights
from .streaming_export import write_model
from .vision_graph import VisionPlan, build_vision

VISION_FILE, EMBEDDING_FILE, TEXT_FILE = "vision.onnx", "embedding.onnx", "text.onnx"
_BITS = {"int8": 8, "int4": 4, "float32": None}


def vision_plan(vision: Phi3VisionConfig, precision: str, output_dtype: str) -> VisionPlan:
    clip = vision.vision_config
    act = str(clip.get("hidden_act"))
    if act not in ("quick_gelu", "gelu"):
        raise BuildError(f"the ONNX vision exporter builds CLIP with quick_gelu or gelu, not {act}")
    return VisionPlan(clip_hidden=int(clip["hidden_size"]), clip_heads=int(clip["num_attention_heads"]),
                      clip_intermediate=int(clip["intermediate_size"]), clip_layers_run=vision.clip_layers_run,
                      clip_eps=float(clip["layer_norm_eps"]), clip_act=act,  # type: ignore[arg-type]
                      text_hidden=vision.hidden_size, bits=_BITS[precision], output_dtype=output_dtype)  # type: ignore[arg-type]


def check_vision_tensors(source_dir: Path, config: dict[str, Any]) -> Phi3VisionConfig:
    vision = parse_config(config)
    tensors = CheckpointTensors(source_dir)
    try:
        tensors.check(vision_plan(vision, "int8", "float32").needed_tensors())
    finally:
        tensors.close()
    return vision


@dataclass(frozen=True)
class VisionParts:
    vision_bytes: int
    embedding_bytes: int
    plan: VisionPlan


def export_vision_parts(source_dir: Path, out_dir: Path, config: dict[str, Any], *, precision: str,
                        io_dtype: str, table: str, table_block: int,
                        on_tensor: Callable[[str, int, int], None] | None = None) -> VisionParts:
    """Write ``vision.onnx`` and ``embedding.onnx`` (+ ``.data``) into ``out_dir``."""
    vision = parse_config(config)
    plan = vision_plan(vision, precision, io_dtype)
    tensors = CheckpointTensors(source_dir)
    try:
        tensors.check(plan.needed_tensors())
        write_model(build_vision(plan, LazyWeights(tensors, np.float32)), out_dir, VISION_FILE, on_tensor)
        weights = LazyWeights(tensors, np.float32 if io_dtype == "float32" else np.float16)
        embedding = EmbeddingPlan(vision.vocab_size, vision.hidden_size, table, table_block, io_dtype)  # type: ignore[arg-type]
        write_model(build_embedding(embedding, weights), out_dir, EMBEDDING_FILE, on_tensor)
    finally:
        tensors.close()

    def size(name: str) -> int:
        return sum(p.stat().st_size for p in out_dir.glob(f"{name}*"))

    return VisionParts(size(VISION_FILE), size(EMBEDDING_FILE), plan)
