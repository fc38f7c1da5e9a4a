"""Recipe options for the ONNX (onnxruntime-genai) formats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class OnnxSettings:
    """Options passed to onnxruntime-genai's model builder.

    precision: weight precision of the MatMuls (int4 MatMulNBits, or int8).
    block_size: quantization block size along the input dimension (16..256, power of two).
    algorithm: the builder's ``algo_config``: ``default``/``rtn`` round-to-nearest, ``k_quant``
        (k-quant mixed choice of scales).
    accuracy_level: minimum compute precision of MatMulNBits (4 = int8 activations, fastest on CPU;
        1 = fp32, 2 = fp16, 3 = bf16, 0 = unset).
    symmetric: int4 (true) or uint4 with zero points (false).
    quantize_lm_head: quantize the output projection too (saves ~90 MB on Phi-3.5-mini).
    execution_provider: what the graph is built for: cpu or cuda.
    """

    precision: Literal["int4", "int8"] = "int4"
    block_size: Literal[16, 32, 64, 128, 256] = 32
    algorithm: Literal["default", "rtn", "k_quant"] = "default"
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4
    symmetric: bool = True
    quantize_lm_head: bool = True
    execution_provider: Literal["cpu", "cuda"] = "cpu"
