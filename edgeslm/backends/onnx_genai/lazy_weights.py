"""The exporter's initializers as ``onnx_ir.LazyTensor``s: computed when the writer reaches them.

A quantized projection is three initializers (packed weights, scales, zero points) made by one
quantization, so the first of them to be written quantizes once and parks the others until the
writer takes them; nothing else is kept. Quantization is onnxruntime's own MLAS kernel
(``quantize_matmul_4bits``/``_8bits``), the one onnxruntime-genai's builder and
``MatMulNBitsQuantizer`` call, so the packing is MatMulNBits' layout by construction: for a weight
W [K, N] (inputs x outputs), packed [N, K/block, block*bits/8] uint8, scales [N, K/block], zero
points [N, ceil(K/block * bits/8)] uint8 (asymmetric only).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .checkpoint_tensors import CheckpointTensors

_IR_DTYPE = {np.dtype(np.float32): ir.DataType.FLOAT, np.dtype(np.float16): ir.DataType.FLOAT16,
             np.dtype(np.uint8): ir.DataType.UINT8}


@dataclass(frozen=True)
class QuantizedMatMul:
    packed: ir.LazyTensor
    scales: ir.LazyTensor
    zero_points: ir.LazyTensor | None
    k: int
    n: int


class LazyWeights:
    """Makes lazy initializers that read ``tensors`` on demand.

    ``float_dtype`` is the dtype of float initializers (fp32 for CPU graphs, fp16 for CUDA); a weight
    is widened to fp32 from the checkpoint, then rounded once to ``float_dtype`` where that is fp16
    (as the builder does when it loads the model in fp16).
    """

    def __init__(self, tensors: CheckpointTensors, float_dtype=np.float32):
        self.tensors = tensors
        self.float_dtype = np.dtype(float_dtype)
        self._parked: dict[str, dict] = {}  # quantized parts not yet written, by weight
        self._counts: dict[str, int] = {}  # how many initializers each quantization feeds
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Lock] = {}

    # -- float tensors ---------------------------------------------------------------------------
    def vector(self, name: str, onnx_name: str) -> ir.LazyTensor:
        shape = self.tensors.shape(name)
        return self._lazy(onnx_name, lambda: self.tensors.fp32(name).astype(self.float_dtype), self.float_dtype, shape)

    def table(self, name: str, onnx_name: str, dtype) -> ir.LazyTensor:
        """An embedding table, stored as ``dtype`` (fp32/fp16)."""
        return self._lazy(onnx_name, lambda: self.tensors.fp32(name).astype(dtype), np.dtype(dtype),
                          self.tensors.shape(name))

    def array(self, name: str, onnx_name: str, shape: tuple[int, ...] | None = None) -> ir.LazyTensor:
        """A float tensor as stored (a conv kernel, a position table), optionally reshaped."""
        shape = tuple(shape or self.tensors.shape(name))
        return self._lazy(onnx_name, lambda: self.tensors.fp32(name).reshape(shape).astype(self.float_dtype),
                          self.float_dtype, shape)

    def dense(self, name: str, onnx_name: str, rows: slice | None = None) -> ir.LazyTensor:
        """An unquantized MatMul weight: the transposed [K, N] float matrix."""
        n, k = self._rows_shape(name, rows)

        def make() -> np.ndarray:
            return np.ascontiguousarray(self._weight(name, rows).T).astype(self.float_dtype)

        return self._lazy(onnx_name, make, self.float_dtype, (k, n))

    def constant(self, onnx_name: str, values: np.ndarray) -> ir.Tensor:
        return ir.Tensor(values, name=onnx_name)

    # -- quantized MatMulNBits weights -----------------------------------------------------------
    def quantized(self, name: str, onnx_prefix: str, bits: int, block_size: int, symmetric: bool,
                  rows: slice | None = None) -> QuantizedMatMul:
        n, k = self._rows_shape(name, rows)
        blocks = -(-k // block_size)
        blob = block_size * bits // 8
        key = f"{onnx_prefix}#{rows}"

        def part(which: str) -> Callable[[], np.ndarray]:
            return lambda: self._take(key, which, lambda: self._quantize(name, rows, bits, block_size, symmetric))

        packed = self._lazy(f"{onnx_prefix}.weight_Q{bits}", part("packed"), np.uint8, (n, blocks, blob))
        scales = self._lazy(f"{onnx_prefix}.weight_scales", part("scales"), self.float_dtype, (n, blocks))
        zero_points = None
        if not symmetric:
            zp_cols = -(-blocks * bits // 8)
            zero_points = self._lazy(f"{onnx_prefix}.weight_zero_points", part("zero_points"), np.uint8, (n, zp_cols))
        self._counts[key] = 2 if symmetric else 3
        return QuantizedMatMul(packed, scales, zero_points, k, n)

    def quantized_table(self, name: str, onnx_prefix: str, block_size: int) -> tuple[ir.LazyTensor, ir.LazyTensor]:
        """An embedding table [vocab, hidden] as symmetric int4 rows for GatherBlockQuantized:
        (uint8 [vocab, hidden/2], scales [vocab, hidden/block])."""
        vocab, hidden = self.tensors.shape(name)
        key = f"{onnx_prefix}#table"

        def quantize() -> dict[str, np.ndarray]:
            result = self._quantize(name, None, 4, block_size, True)
            return {"packed": result["packed"].reshape(vocab, -1), "scales": result["scales"]}

        def part(which: str) -> Callable[[], np.ndarray]:
            return lambda: self._take(key, which, quantize)

        self._counts[key] = 2
        data = self._lazy(f"{onnx_prefix}.weight_Q4", part("packed"), np.uint8, (vocab, hidden // 2))
        scales = self._lazy(f"{onnx_prefix}.weight_scales", part("scales"), self.float_dtype,
                            (vocab, -(-hidden // block_size)))
        return data, scales

    def _quantize(self, name: str, rows: slice | None, bits: int, block_size: int, symmetric: bool) -> dict:
        from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

        weight = self._weight(name, rows)  # [N, K] fp32
        n, k = weight.shape
        matrix = np.ascontiguousarray(weight.T.astype(self.float_dtype))  # [K, N]
        del weight
        blocks = -(-k // block_size)
        if blocks * block_size != k:
            matrix = np.pad(matrix, ((0, blocks * block_size - k), (0, 0)))
        packed = np.zeros((n, blocks, block_size * bits // 8), dtype=np.uint8)
        scales = np.zeros((n, blocks), dtype=self.float_dtype)
        zero_points = np.zeros((n, -(-blocks * bits // 8)), dtype=np.uint8)
        kernel = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
        kernel(packed, matrix, scales, zero_points, block_size, n, k, symmetric)
        return {"packed": packed, "scales": scales, "zero_points": zero_points}

    def _take(self, key: str, which: str, compute: Callable[[], dict]) -> np.ndarray:
        with self._lock:
            busy = self._busy.setdefault(key, threading.Lock())
        with busy:  # one quantization per weight, even when two writer threads ask at once
            parts = self._parked.get(key)
            if parts is None or which not in parts:
                parts = dict(compute())
                parts["_left"] = self._counts[key]
                self._parked[key] = parts
            value = parts.pop(which)
            parts["_left"] -= 1
            if parts["_left"] == 0:
                del self._parked[key]
        return value

    # -- helpers ---------------------------------------------------------------------------------
    def _weight(self, name: str, rows: slice | None) -> np.ndarray:
        weight = self.tensors.fp32(name)
        return weight if rows is None else np.ascontiguousarray(weight[rows])

    def _rows_shape(self, name: str, rows: slice | None) -> tuple[int, int]:
        n, k = self.tensors.shape(name)
        if rows is not None:
            n = len(range(*rows.indices(n)))
        return n, k

    @staticmethod
    def _lazy(onnx_name: str, make: Callable[[], np.ndarray], dtype, shape) -> ir.LazyTensor:
        return ir.LazyTensor(lambda: ir.Tensor(make()), dtype=_IR_DTYPE[np.dtype(dtype)], shape=ir.Shape(list(shape)),
                             name=onnx_name)
