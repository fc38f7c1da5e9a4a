"""Rotary cos/sin caches for GroupQueryAttention, as onnxruntime-genai's builder makes them (numpy).

Phi-3 LongRoPE (``rope_scaling.type`` = longrope/su, when ``max_position_embeddings`` differs from
``original_max_position_embeddings``): two caches, *small* over the original context with the short
factors and *large* over the full context with the long factors, each scaled by
``sqrt(1 + ln(max/original) / ln(original))`` (or the config's ``short_mscale``/``long_mscale``); the
graph picks one by total sequence length (``If``). Plain RoPE: one cache over the context. Caches are
[positions, head_dim/2], the layout GroupQueryAttention's ``do_rotary`` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class RotaryPlan:
    theta: float
    head_dim: int
    context_length: int  # max_position_embeddings
    original_context_length: int
    short_factor: tuple[float, ...] | None  # None: plain RoPE
    long_factor: tuple[float, ...] | None
    short_mscale: float
    long_mscale: float

    @property
    def multi_cache(self) -> bool:
        return self.long_factor is not None

    @classmethod
    def of(cls, config: dict[str, Any]) -> RotaryPlan:
        heads = int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
        if float(config.get("partial_rotary_factor", 1.0)) != 1.0:
            raise ValueError("partial rotary embeddings are not handled by the streaming exporter")
        scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
        theta = float(config.get("rope_theta") or scaling.get("rope_theta") or 10000.0)
        context = int(config["max_position_embeddings"])
        original = int(config.get("original_max_position_embeddings") or context)
        kind = scaling.get("type") or scaling.get("rope_type") or "default"
        if context == original or kind == "default":
            if kind not in ("default", "longrope", "su"):
                raise ValueError(f"rope scaling '{kind}' is not handled by the streaming exporter")
            return cls(theta, head_dim, context, original, None, None, 1.0, 1.0)
        if kind not in ("longrope", "su"):
            raise ValueError(f"rope scaling '{kind}' is not handled by the streaming exporter")
        short, long = tuple(map(float, scaling["short_factor"])), tuple(map(float, scaling["long_factor"]))
        if len(short) != head_dim // 2 or len(long) != head_dim // 2:
            raise ValueError(f"LongRoPE needs {head_dim // 2} short and long factors, the config has "
                             f"{len(short)} and {len(long)}")
        default_mscale = _su_mscale(context / original, original)
        return cls(theta, head_dim, context, original, short, long,
                   float(scaling.get("short_mscale") or default_mscale), float(scaling.get("long_mscale") or default_mscale))


def _su_mscale(scale: float, original: int) -> float:
    return 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(original))


def rotary_cache(plan: RotaryPlan, length: int, factors: tuple[float, ...] | None, mscale: float,
                 dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each [length, head_dim/2]."""
    dim = plan.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    rescale = np.ones(dim // 2, dtype=np.float32) if factors is None else np.asarray(factors, dtype=np.float32)
    powers = np.power(np.float64(plan.theta), exponents.astype(np.float64)).astype(np.float32)  # correctly rounded, as torch
    inv_freq = (np.float32(1.0) / (rescale * powers)).astype(np.float32)
    freqs = np.outer(np.arange(length, dtype=np.int64).astype(np.float32), inv_freq).astype(np.float32)
    wide = freqs.astype(np.float64)  # cos of the fp32 angles, correctly rounded (numpy fp32 cos drifts at large angles)
    cos = (np.cos(wide).astype(np.float32) * np.float32(mscale)).astype(dtype)
    sin = (np.sin(wide).astype(np.float32) * np.float32(mscale)).astype(dtype)
    return cos, sin


def caches(plan: RotaryPlan, dtype=np.float32) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'small': (cos, sin), 'large': (cos, sin)} for LongRoPE, else {'single': (cos, sin)}."""
    if not plan.multi_cache:
        return {"single": rotary_cache(plan, plan.context_length, None, 1.0, dtype)}
    return {"small": rotary_cache(plan, plan.original_context_length, plan.short_factor, plan.short_mscale, dtype),
            "large": rotary_cache(plan, plan.context_length, plan.long_factor, plan.long_mscale, dtype)}
