"""What weight compression an OpenVINO IR really holds: bytes and counts of weight constants by type.

A weight is a constant that reaches a MatMul, or the table of a Gather on ``input_ids``, through its
decompression chain (Convert, Subtract zero point, Multiply scale, Reshape). The scales and zero
points of that chain are not weights (they are the other operand of the Multiply / Subtract), and
neither are the rotary cos/sin tables (gathered by position). Bodies of ``If``/``Loop`` ops are
searched too, so a weight inside a branch is not missed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

_CHAIN = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze")
_INTEGER = ("i4", "u4", "i8", "u8")


def weight_compression_stats(model_xml: Path) -> dict[str, Any]:
    """Counts and bytes of the weight constants per element type (e.g. i4/u4/i8/f16), and group sizes
    of the int4 and int8 ones (-1: channel-wise)."""
    import openvino as ov

    model = ov.Core().read_model(str(model_xml))
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    groups: dict[str, Counter[int]] = {"int4": Counter(), "int8": Counter()}
    for op in _all_ops(model):
        if op.get_type_name() != "Constant" or not _is_weight(op):
            continue
        kind = op.get_output_element_type(0).get_type_name()
        shape = list(op.get_output_partial_shape(0).to_shape())
        counts[kind] += 1
        sizes[kind] += op.get_byte_size()
        if kind in _INTEGER:
            family = "int4" if kind.endswith("4") else "int8"
            groups[family][shape[2] if len(shape) == 3 else -1] += 1  # 2-D integer weights are channel-wise
    return {"constants": dict(counts), "bytes": dict(sizes),
            "int4_group_sizes": {str(k): v for k, v in groups["int4"].items()},
            "int8_group_sizes": {str(k): v for k, v in groups["int8"].items()}}


def _all_ops(model):
    """The model's ops and those of every If/Loop body in it."""
    for op in model.get_ops():
        yield op
        for body in _bodies(op):
            yield from _all_ops(body)


def _bodies(op) -> list:
    kind = op.get_type_name()
    if kind == "If":
        return [op.get_function(0), op.get_function(1)]
    if kind in ("Loop", "TensorIterator"):
        return [op.get_function()]
    return []


def _is_weight(const) -> bool:
    shape = const.get_output_partial_shape(0)
    if shape.rank.get_length() < 2 or _numel(list(shape.to_shape())) < 4096:
        return False  # norms, shapes and small tables are not weights
    return any(_reaches_weight_use(target, depth=0) for target in const.output(0).get_target_inputs())


def _reaches_weight_use(target, depth: int) -> bool:
    """Whether the input ``target`` (fed by the weight or its chain so far) leads to a weight use."""
    node, index = target.get_node(), target.get_index()
    kind = node.get_type_name()
    if kind == "MatMul":
        return True
    if kind == "Gather":
        return index == 0 and _from_input_ids(node.input_value(1))
    if kind not in _CHAIN or depth > 8:
        return False
    if kind in ("Subtract", "Multiply") and index == 1 and _is_chain_start(node.input_value(0)):
        return False  # the zero point / scale of a decompression chain, not the weight
    if kind in ("Reshape", "Transpose", "Unsqueeze") and index != 0:
        return False
    return any(_reaches_weight_use(t, depth + 1) for t in node.output(0).get_target_inputs())


def _is_chain_start(value) -> bool:
    """Whether ``value`` is (a Convert or Subtract of) a constant: the weight side of a decompression."""
    node = value.get_node()
    for _ in range(3):
        if node.get_type_name() == "Constant":
            return True
        if node.get_type_name() not in ("Convert", "Subtract"):
            return False
        node = node.input_value(0).get_node()
    return False


def _from_input_ids(value, depth: int = 0) -> bool:
    node = value.get_node()
    if node.get_type_name() == "Parameter":
        return value.get_any_name() == "input_ids" or "input_ids" in value.get_names()
    if node.get_type_name() == "Convert" and depth < 4:
        return _from_input_ids(node.input_value(0), depth + 1)
    return False


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
