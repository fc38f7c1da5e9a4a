"""The input widths of a Phi-3 checkpoint's quantized layers, and the check that a group size fits them.

Group-wise weight quantization (int4 groups, affine groups) cuts each weight row along its
input dimension into groups of ``group_size`` columns; a width the group size does not divide makes
the converter fail deep inside with an exception that names neither the layer nor the
fix. The build refuses such a recipe before exporting, with one line naming the width, the group
size and the ``--set`` that works.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..model_shape import ModelShape


def layer_input_widths(config: dict[str, Any]) -> dict[int, tuple[str, ...]]:
    """width -> the layers that take it as input (qkv/gate_up/lm_head: hidden; o_proj; down_proj)."""
    shape = ModelShape.of(config)
    widths: dict[int, list[str]] = {}
    for width, layer in ((shape.hidden_size, "qkv_proj, gate_up_proj, lm_head"), (shape.heads * shape.head_dim, "o_proj"),
                         (shape.intermediate_size, "down_proj")):
        widths.setdefault(width, []).append(layer)
    return {width: tuple(layers) for width, layers in widths.items()}


def group_size_problem(config: dict[str, Any], group_size: int, fmt: str, allowed: Iterable[int]) -> str | None:
    """None when ``group_size`` divides every layer width (or is channel-wise, -1); else the one-line
    problem with the ``--set`` that fixes it (the largest allowed group size that divides all widths)."""
    if group_size <= 0:
        return None
    widths = layer_input_widths(config)
    bad = [(w, layers) for w, layers in widths.items() if w % group_size]
    if not bad:
        return None
    width, layers = bad[0]
    fits = [g for g in sorted(allowed, reverse=True) if g > 0 and all(w % g == 0 for w in widths)]
    fix = fits[0] if fits else -1 if -1 in allowed else None
    text = (f"layer width {width} ({', '.join(layers)} input) is not divisible by {fmt} group_size "
            f"{group_size}")
    if fix is not None:
        text += f": use [[overrides]] {fmt}.group_size={fix}" + (" (channel-wise)" if fix == -1 else "")
    return text
