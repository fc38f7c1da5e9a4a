"""Recipe options for the GGUF format (llama.cpp / Ollama)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

STREAMED_TYPES = ("Q4_0", "Q8_0")  # what gguf-py's numpy quantizers write, one tensor at a time
LLAMA_QUANTIZED_TYPES = ("Q4_K_M",)  # made by llama.cpp's own quantize (llama-cpp-python) from a streamed F16 file


@dataclass(frozen=True)
class GgufSettings:
    """How the GGUF file is made and run.

    quant_type: ``Q4_0`` (default: llama.cpp's fastest 4-bit CPU path, repacked at load on AVX2/NEON),
        ``Q8_0`` (both streamed with gguf-py's quantizers, no torch), or ``Q4_K_M`` (a streamed F16 file
        quantized by llama.cpp's own ``llama_model_quantize`` through llama-cpp-python: needs it on the
        build host).
    output_type: the output projection (lm_head) in the streamed types: ``Q8_0`` (default; llama.cpp's
        own Q4_0 recipe uses Q6_K there, which gguf-py cannot write), ``Q4_0`` or ``F16``. Q4_K_M
        always follows llama.cpp's recipe (Q6_K).
    kv_cache_type: the KV cache llama.cpp allocates on the device: ``f16`` (its default) or ``q8_0``
        (half the memory per token; needs flash attention, which the engine then turns on).
    batch_size: prompt tokens per llama.cpp batch (``n_batch``) when filling the KV cache.
    modelfile: write an Ollama ``Modelfile`` beside the GGUF (``ollama create NAME -f Modelfile``).
    """

    quant_type: Literal["Q4_0", "Q8_0", "Q4_K_M"] = "Q4_0"
    output_type: Literal["Q8_0", "Q4_0", "F16"] = "Q8_0"
    kv_cache_type: Literal["f16", "q8_0"] = "f16"
    batch_size: int = 512
    modelfile: bool = True

    def __post_init__(self) -> None:
        if not 16 <= self.batch_size <= 4096:
            raise ValueError(f"batch_size must be between 16 and 4096, got {self.batch_size}")

    @property
    def streamed(self) -> bool:
        return self.quant_type in STREAMED_TYPES
