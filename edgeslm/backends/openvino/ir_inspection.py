"""What weight compression an OpenVINO IR really holds: bytes and counts of weight constants by type."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any


def weight_compression_stats(model_xml: Path) -> dict[str, Any]:
    """Counts and bytes of the weight constants (>= 2 dimensions) per element type, e.g. i4/u4/i8/f16."""
    import openvino as ov

    model = ov.Core().read_model(str(model_xml))
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    group_sizes: Counter[int] = Counter()
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        shape = list(op.get_output_partial_shape(0).to_shape())
        if len(shape) < 2 or _numel(shape) < 4096:
            continue  # scales, zero points, norms and small tables are not weights
        kind = op.get_output_element_type(0).get_type_name()
        counts[kind] += 1
        sizes[kind] += op.get_byte_size()
        if kind in ("i4", "u4"):
            group_sizes[shape[2] if len(shape) == 3 else -1] += 1  # 2-D int4 weights are channel-wise
    return {"constants": dict(counts), "bytes": dict(sizes),
            "int4_group_sizes": {str(k): v for k, v in group_sizes.items()}}


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
