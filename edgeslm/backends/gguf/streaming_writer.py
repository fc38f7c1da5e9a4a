"""Write a Phi-3 GGUF one tensor slice at a time: gguf-py's GGUFWriter for the header, numpy for the data.

The header (metadata and every tensor's name, shape, type and offset) is known before any weight is
read, so GGUFWriter writes it first; then each tensor is read from the checkpoint in slices of rows
(``CheckpointTensors.fp32_row_range``: positioned reads, no memory map), quantized with gguf-py's numpy
quantizers (Q4_0 and Q8_0 are ggml's reference algorithms) on two threads and appended in order. Peak
memory is a few slices and their quantized forms (~0.3 GB), whatever the model's size; no torch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BuildError
from ...model_shape import ModelShape
from ..onnx_genai.checkpoint_tensors import CheckpointTensors
from .phi3_layout import PlannedTensor, longrope_factors, tensor_plan, tokenizer_metadata, write_metadata

SLICE_VALUES = 8 * 2**20  # fp32 values read per slice (32 MB)
QUANTIZE_THREADS = 2
ARCHITECTURES = ("Phi3ForCausalLM",)


@dataclass(frozen=True)
class WrittenGguf:
    path: Path
    tensors: int
    bytes: int


def check_checkpoint(folder: Path, config: dict[str, Any], weight_type: str = "Q4_0") -> list[PlannedTensor]:
    """Refuse, before any work, checkpoints this writer does not convert; the plan of what it writes."""
    archs = config.get("architectures") or []
    if not archs or archs[0] not in ARCHITECTURES or config.get("model_type") != "phi3":
        raise BuildError(f"the GGUF writer converts {', '.join(ARCHITECTURES)} (model_type phi3); this checkpoint "
                         f"is {archs[0] if archs else 'of unknown architecture'}",
                         hint="build this model for another format")
    tensors = CheckpointTensors(folder)
    try:
        has_head = "lm_head.weight" in tensors
        plan = tensor_plan(config, weight_type, weight_type, has_head)
        tensors.check({t.source: t.shape for t in plan if t.source})
    finally:
        tensors.close()
    shape = ModelShape.of(config)
    if shape.hidden_size % 32 or shape.intermediate_size % 32:
        raise BuildError(f"GGUF block quantization needs layer widths divisible by 32 (hidden {shape.hidden_size}, "
                         f"intermediate {shape.intermediate_size})")
    return plan


def _quantize(values: np.ndarray, type_name: str) -> np.ndarray:
    import gguf

    if type_name == "F32":
        return values.astype(np.float32, copy=False)
    if type_name == "F16":
        return values.astype(np.float16)
    return gguf.quants.quantize(values, gguf.GGMLQuantizationType[type_name])


def _nbytes(tensor: PlannedTensor) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[tensor.type_name]]
    return int(np.prod(tensor.shape)) // block * size


def stream_gguf(folder: Path, config: dict[str, Any], out: Path, name: str, quant_type: str, weight_type: str,
                output_type: str, on_tensor: Callable[[str, int, int], None] | None = None) -> WrittenGguf:
    """Write ``out``: the checkpoint in ``weight_type`` (``output_type`` for lm_head), file type ``quant_type``."""
    import gguf

    tensors = CheckpointTensors(folder)
    plan = tensor_plan(config, weight_type, output_type, "lm_head.weight" in tensors)
    factors = longrope_factors(config)
    extra = dict(zip(("rope_factors_long.weight", "rope_factors_short.weight"), factors or ()))
    writer = gguf.GGUFWriter(out, "phi3", use_temp_file=False)
    try:
        write_metadata(writer, config, name, quant_type)
        tokenizer_metadata(writer, folder, ModelShape.of(config).vocab_size)
        for tensor in plan:
            raw = gguf.GGMLQuantizationType[tensor.type_name]
            byte_shape = (*tensor.shape[:-1], _nbytes(tensor) // max(int(np.prod(tensor.shape[:-1])), 1))
            writer.add_tensor_info(tensor.name, byte_shape, np.dtype(np.uint8), _nbytes(tensor), raw_dtype=raw)
        writer.write_header_to_file(out)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_data(writer, tensors, plan, extra, on_tensor)
    finally:
        writer.close()
        tensors.close()
    return WrittenGguf(out, len(plan), out.stat().st_size)


def _write_data(writer: Any, tensors: CheckpointTensors, plan: list[PlannedTensor], extra: dict[str, list[float]],
                on_tensor: Callable[[str, int, int], None] | None) -> None:
    """Every tensor's data in header order: slices read in this thread, quantized by QUANTIZE_THREADS
    (numpy releases the GIL), at most that many slices in flight, written in order with ggml's padding."""
    handle = writer.fout[0]
    written = [0] * len(plan)
    pending: deque = deque()

    def write_one() -> None:
        index, last, future = pending.popleft()
        data = future.result()
        if written[index] == 0:
            writer.write_padding(handle, handle.tell())  # the data section and every tensor start aligned
        data.tofile(handle)
        written[index] += data.nbytes
        if last:
            tensor = plan[index]
            if written[index] != _nbytes(tensor):
                raise BuildError(f"GGUF writer: tensor {tensor.name} came out as {written[index]} bytes, "
                                 f"not {_nbytes(tensor)}")
            writer.write_padding(handle, written[index])
            if on_tensor:
                on_tensor(tensor.name, index + 1, len(plan))

    with ThreadPoolExecutor(QUANTIZE_THREADS) as pool:
        for index, tensor in enumerate(plan):
            for part, last in _slices(tensors, tensor, extra):
                pending.append((index, last, pool.submit(_quantize, part, tensor.type_name)))
                while len(pending) > QUANTIZE_THREADS:
                    write_one()
        while pending:
            write_one()
    handle.flush()


def _slices(tensors: CheckpointTensors, tensor: PlannedTensor, extra: dict[str, list[float]]):
    """The tensor's fp32 values in slices of whole rows, each with whether it is the last one."""
    """The tensor's fp32 values in slices of whole rows."""
    if not tensor.source:
        yield np.asarray(extra[tensor.name], dtype=np.float32), True
        return
    if len(tensor.shape) == 1:
        yield tensors.fp32(tensor.source), True
        return
    rows, cols = tensor.shape
    step = max(1, SLICE_VALUES // cols)
    for start in range(0, rows, step):
        yield tensors.fp32_row_range(tensor.source, start, min(rows, start + step)), start + step >= rows
