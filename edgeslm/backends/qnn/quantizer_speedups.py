"""Vectorized stand-ins for two loops of onnxruntime's quantizer, with byte-identical output.

Profiled on one full-width Phi-3.5 layer (its prefill and decode graphs, ``benchmarks/qnn_part_stages.py``
under cProfile, onnxruntime 1.2x): of 224 s, onnxruntime's pure-Python ``pack_bytes_to_4bit`` (a ``while``
loop over every weight byte) took 58.7 s and its per-channel weight quantization (one ``take`` +
``quantize_nparray`` per output channel) about 10 s. Inside ``fast_weight_quantization()``:

- ``pack_bytes_to_4bit`` is the same nibble packing in numpy (low nibble first, an odd tail padded with 0);
- ``quantize_onnx_initializer`` with a per-channel axis quantizes the whole tensor in one call, by handing
  onnxruntime's own per-tensor branch the scale and zero point broadcast to the tensor's shape: the same
  float32 division, rounding, zero-point add and clip per element, so the same bytes.

``tests/test_qnn.py`` checks both against onnxruntime's originals. The patch is undone on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np


def pack_int4(src_8bit: bytes) -> bytearray:
    """``onnxruntime.quantization.quant_utils.pack_bytes_to_4bit``, vectorized."""
    values = np.frombuffer(src_8bit, dtype=np.uint8)
    if values.size % 2:
        values = np.append(values, np.uint8(0))
    packed = (values[0::2] & np.uint8(0x0F)) | ((values[1::2] & np.uint8(0x0F)) << np.uint8(4))
    return bytearray(packed.astype(np.uint8).tobytes())


def _whole_tensor(original: Any) -> Any:
    import onnx

    integer_types = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.INT8,
                     onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16}

    def quantize_onnx_initializer(weight: Any, quant_type: Any, zero_point: np.ndarray, scale: np.ndarray,
                                  axis: int | None = None, quant_weight_name: str | None = None,
                                  block_size: int = 0) -> Any:
        if axis is None or block_size > 0 or quant_type not in integer_types:
            return original(weight, quant_type, zero_point, scale, axis, quant_weight_name, block_size)
        dims = tuple(int(d) for d in weight.dims)
        along = [1] * len(dims)
        along[axis] = dims[axis]
        full_scale = np.broadcast_to(np.asarray(scale).reshape(along), dims).ravel()
        full_zero = np.broadcast_to(np.asarray(zero_point).reshape(along), dims).ravel()
        return original(weight, quant_type, full_zero, full_scale, None, quant_weight_name, 0)

    return quantize_onnx_initializer


@contextlib.contextmanager
def fast_weight_quantization() -> Iterator[None]:
    from onnxruntime.quantization import base_quantizer, onnx_quantizer, qdq_quantizer, quant_utils

    saved = [(quant_utils, "pack_bytes_to_4bit"), (base_quantizer, "pack_bytes_to_4bit"),
             (qdq_quantizer, "quantize_onnx_initializer"), (onnx_quantizer, "quantize_onnx_initializer")]
    originals = [getattr(module, name) for module, name in saved]
    whole = _whole_tensor(quant_utils.quantize_onnx_initializer)
    replacements = [pack_int4, pack_int4, whole, whole]
    try:
        for (module, name), replacement in zip(saved, replacements):
            setattr(module, name, replacement)
        yield
    finally:
        for (module, name), original in zip(saved, originals):
            setattr(module, name, original)
