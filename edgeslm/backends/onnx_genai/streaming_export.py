"""Write a Phi-3 decoder as ONNX one tensor at a time: the streaming exporter's core.

The graph is built with lazy initializers (``decoder_graph``); ``onnx_ir.save`` then asks for each
initializer in turn, which reads it from the memory-mapped checkpoint, quantizes it and writes it to
``model.onnx.data`` at once. The model is never materialised: peak memory is about one fp32 weight
and its quantized form per writer thread, plus the rotary caches. Nothing but onnx_ir, numpy and
onnxruntime's quantization kernel is needed (no torch, no transformers).
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BuildError, DiskSpaceError
from ...model_shape import ModelShape
from .checkpoint_tensors import CheckpointTensors
from .decoder_graph import DecoderPlan, build_decoder, needed_tensors
from .lazy_weights import LazyWeights
from .rotary_caches import RotaryPlan

ARCHITECTURES = ("Phi3ForCausalLM", "Phi3VForCausalLM")
_MODEL_TYPES = {"Phi3ForCausalLM": ("phi3", None), "Phi3VForCausalLM": ("phi3_v",)}
WRITER_THREADS = 2  # quantize two weights at once; ~0.5 GB in flight at full size


@dataclass(frozen=True)
class StreamedDecoder:
    model_path: Path
    data_path: Path
    tensors_written: int


def check_architecture(config: dict[str, Any]) -> None:
    """Refuse, before any work, checkpoints whose graph this exporter does not build."""
    archs = config.get("architectures") or []
    if not archs or archs[0] not in ARCHITECTURES or config.get("model_type") not in _MODEL_TYPES[archs[0]]:
        raise BuildError(f"the streaming ONNX exporter builds {', '.join(ARCHITECTURES)}; this checkpoint is "
                         f"{archs[0] if archs else 'of unknown architecture'}",
                         hint="use [[set]] onnx-int4-cpu.exporter=ort-builder for other architectures")
    if config.get("tie_word_embeddings"):
        raise BuildError("the streaming ONNX exporter does not handle tied embeddings (Phi-3 has none)")
    if str(config.get("hidden_act", "silu")) != "silu":
        raise BuildError(f"the streaming ONNX exporter handles the silu MLP, not {config.get('hidden_act')}")
    try:
        RotaryPlan.of(config)
    except (ValueError, KeyError) as exc:
        raise BuildError(f"the streaming ONNX exporter cannot build this checkpoint's rotary embedding: {exc}") from None


def check_checkpoint(source_dir: Path, config: dict[str, Any]) -> None:
    """Everything that can be known before the export: architecture, tensors, their shapes and dtypes."""
    check_architecture(config)
    tensors = CheckpointTensors(source_dir)
    try:
        tensors.check(needed_tensors(ModelShape.of(config), range(ModelShape.of(config).layers), True, True))
    finally:
        tensors.close()


def decoder_plan(config: dict[str, Any], **options) -> DecoderPlan:
    return DecoderPlan(shape=ModelShape.of(config), rotary=RotaryPlan.of(config),
                       eps=float(config.get("rms_norm_eps", 1e-5)), **options)


def stream_decoder(source_dir: Path, out_dir: Path, plan: DecoderPlan, *,
                   on_tensor: Callable[[str, int, int], None] | None = None,
                   filename: str = "model.onnx") -> StreamedDecoder:
    """Export ``plan``'s decoder (or segment) from ``source_dir`` into ``out_dir``/``filename``(.data)."""
    tensors = CheckpointTensors(source_dir)
    layers = plan.layer_range
    embed = not (plan.inputs_embeds or plan.first_layer > 0)
    tensors.check(needed_tensors(plan.shape, layers, embed, not plan.hidden_output))
    weights = LazyWeights(tensors, np.float32 if plan.io_dtype == "float32" else np.float16)
    try:
        written = write_model(build_decoder(plan, weights), out_dir, filename, on_tensor)
    finally:
        tensors.close()
    model_path = out_dir / filename
    return StreamedDecoder(model_path, out_dir / f"{filename}.data", written)


def write_model(model, out_dir: Path, filename: str,
                on_tensor: Callable[[str, int, int], None] | None = None) -> int:
    """Save a model of lazy initializers as ``filename`` + ``filename.data``, each tensor computed as the
    writer reaches it; returns the number of tensors written."""
    import onnx_ir as ir

    total = len(model.graph.initializers)
    written = 0

    def progress(tensor, info) -> None:
        nonlocal written
        written += 1
        if on_tensor is not None:
            on_tensor(str(tensor.name), written, total)

    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        ir.save(model, out_dir / filename, external_data=f"{filename}.data", callback=progress,
                max_workers=WRITER_THREADS, max_in_flight_bytes=512 * 2**20)
    except OSError as exc:
        # a short write ("N requested and M written") carries no errno: look at the disk
        if exc.errno == errno.ENOSPC or shutil.disk_usage(out_dir).free < 16 * 2**20:
            raise DiskSpaceError(f"out of disk space while writing {out_dir.name}/{filename}.data",
                                 hint="free some space or pass [[out]] on a larger disk") from None
        raise
    return written
