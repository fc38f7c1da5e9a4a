"""Rotary embedding tables for the static graphs, computed once at build time (numpy only).

The graphs take ``cos``/``sin`` as inputs so that no rotary math (and no LongRoPE switch) is compiled
for the NPU. The tables follow transformers' Phi-3 for sequences within
``original_max_position_embeddings``: inverse frequencies from the LongRoPE *short* factors and both
tables scaled by the attention factor ``sqrt(1 + ln(max / original) / ln(original))``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...model_shape import ModelShape


def rope_tables(config: dict[str, Any], positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each [positions, head_dim] float32."""
    head_dim = ModelShape.of(config).head_dim
    rotary = head_dim  # Phi-3 rotates the whole head (the exporter refuses partial_rotary_factor != 1)
    base = float(config.get("rope_theta", 10000.0))
    exponents = np.arange(0, rotary, 2, dtype=np.int64).astype(np.float32) / rotary
    scaling = config.get("rope_scaling") or {}
    factor_scale = 1.0
    if scaling.get("type", scaling.get("rope_type")) in ("longrope", "su"):
        ext = np.asarray(scaling["short_factor"], dtype=np.float32)
        original = int(config.get("original_max_position_embeddings") or 4096)
        ratio = float(config["max_position_embeddings"]) / original
        factor_scale = 1.0 if ratio <= 1.0 else math.sqrt(1 + math.log(ratio) / math.log(original))
    else:
        ext = np.ones_like(exponents)
    inv_freq = (1.0 / (ext * np.float32(base) ** exponents)).astype(np.float32)
    freqs = np.arange(positions, dtype=np.float32)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos = (np.cos(emb) * factor_scale).astype(np.float32)
    sin = (np.sin(emb) * factor_scale).astype(np.float32)
    return cos, sin
