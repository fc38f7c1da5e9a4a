"""Phi-3 LongRoPE under mlx-lm: use the short factors, as transformers does up to 4096 tokens.

transformers' Phi-3 rotates with ``short_factor`` while the sequence is within
``original_max_position_embeddings`` (4096) and with ``long_factor`` beyond it. mlx-lm's
``SuScaledRoPE`` always uses ``long_factor``, so a plain ``mlx_lm convert`` of Phi-3.5-mini computes
a different model at every length a phone or laptop will use: +46% perplexity on the docs model,
even unquantized. We rotate with the short factors (model and saved config) and cap the artifact's
context at ``original_max_position_embeddings``, where that is exactly transformers' behaviour.
The attention scaling (``sqrt(1 + ln(max/original) / ln(original))``) is the same in both regimes
and mlx-lm already applies it.
"""

from __future__ import annotations

from typing import Any


def uses_longrope(config: dict[str, Any]) -> bool:
    scaling = config.get("rope_scaling") or {}
    return scaling.get("type", scaling.get("rope_type")) in ("longrope", "su") and "short_factor" in scaling


def context_limit(config: dict[str, Any]) -> int | None:
    """The longest sequence the converted model computes like the source (None: no limit of ours)."""
    if not uses_longrope(config):
        return None
    return int(config.get("original_max_position_embeddings") or 4096)


def short_factor_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config whose long factors are the short ones (what stock mlx-lm then loads)."""
    if not uses_longrope(config):
        return dict(config)
    scaling = dict(config["rope_scaling"])
    scaling["long_factor"] = list(scaling["short_factor"])
    return {**config, "rope_scaling": scaling}


def apply_short_factors(model: Any, config: dict[str, Any]) -> int:
    """Switch a loaded mlx-lm Phi-3 model's rotary embeddings to the short factors; returns layers changed."""
    if not uses_longrope(config):
        return 0
    import mlx.core as mx

    base = float(config.get("rope_theta", 10000.0))
    changed = 0
    for layer in model.model.layers:
        rope = layer.self_attn.rope
        dims = rope.dim
        freqs = base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
        rope._freqs = mx.array(config["rope_scaling"]["short_factor"], dtype=mx.float32) * freqs
        changed += 1
    return changed
