"""Recipe options for the ONNX (onnxruntime-genai) formats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class OnnxSettings:
    """How the ONNX decoder is made.

    exporter: ``streaming`` (edgeslm's own, Phi-3 family: reads one tensor at a time from the mapped
        checkpoint, ~1 GB of RAM at 3.8B, no torch) or ``ort-builder`` (onnxruntime-genai's model builder:
        loads the whole model with transformers, 23 GB at 3.8B; any architecture it knows; needs
        ``pip install 'edgeslm[build-onnx-builder]'``).
    precision: weight precision of the MatMuls (int4 MatMulNBits, or int8).
    block_size: quantization block size along the input dimension (16..256, power of two).
    algorithm: the builder's ``algo_config`` (ort-builder only): ``default``/``rtn`` round-to-nearest,
        ``k_quant``. The streaming exporter always uses round-to-nearest (MLAS, as ``default``).
    accuracy_level: minimum compute precision of MatMulNBits (4 = int8 activations, fastest on CPU;
        1 = fp32, 2 = fp16, 3 = bf16, 0 = unset).
    symmetric: int4 (true) or uint4 with zero points (false).
    quantize_lm_head: quantize the output projection too (saves ~90 MB on Phi-3.5-mini).
    embedding: storage of the embedding table (streaming only; the builder keeps it in the I/O dtype):
        ``auto`` (float16), ``float32`` (as the builder does on CPU: 394 MB at 3.8B), ``float16`` or ``int4``
        (GatherBlockQuantized, block_size, always symmetric; the recipe's CPU default: 3.8B under 2.2 GB).
    execution_provider: what the graph is built for: cpu (fp32 I/O) or cuda (fp16 I/O, Jetson).
    num_crops: Phi-3.5-vision only: the most 336-px crops an image is cut into (1..16; the checkpoint's 4).
        Fewer crops cost detail but fewer image tokens: a 2x2 image is 757 tokens at 4 crops, 313 at 1.
    vision_precision: Phi-3.5-vision only: CLIP's linear layers as int8 or int4 MatMulNBits, or float32.
    """

    exporter: Literal["streaming", "ort-builder"] = "streaming"
    precision: Literal["int4", "int8"] = "int4"
    block_size: Literal[16, 32, 64, 128, 256] = 32
    algorithm: Literal["default", "rtn", "k_quant"] = "default"
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4
    symmetric: bool = True
    quantize_lm_head: bool = True
    embedding: Literal["auto", "float32", "float16", "int4"] = "auto"
    execution_provider: Literal["cpu", "cuda"] = "cpu"
    num_crops: int = 4
    vision_precision: Literal["int8", "int4", "float32"] = "int8"

    def __post_init__(self) -> None:
        if not 1 <= self.num_crops <= 16:
            raise ValueError(f"num_crops must be between 1 and 16, got {self.num_crops}")

    @property
    def embedding_dtype(self) -> str:
        return "float16" if self.embedding == "auto" else self.embedding
