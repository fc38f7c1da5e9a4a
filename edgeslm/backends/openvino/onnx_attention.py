"""Replace the ONNX frontend's GroupQueryAttention with public OpenVINO ops, in the optimum-intel interface.

OpenVINO's ONNX frontend turns ``com.microsoft.GroupQueryAttention`` into an internal "extension" op
that compiles but cannot be serialized and read back. This pass rebuilds each one from opset ops:
rotary embedding (HF's ``x*cos + rotate_half(x)*sin`` form, which the CPU/GPU plugins fuse into
their RoPE kernel) with rows picked by a new ``position_ids`` input, past/present KV ``Concat``, KV-head
repeat for GQA, and ``ScaledDotProductAttention`` with an explicit mask (causal by KV index AND the
``attention_mask`` padding). That is the interface optimum-intel's IRs have (``input_ids``,
``attention_mask``, ``position_ids``, then ``beam_idx`` once stateful) and what openvino-genai's
LLMPipeline and the NPU pipeline (NPUW) expect.

LongRoPE's ``If`` (small or large cos/sin tables by total length) becomes a ``Select`` on rows gathered
from both tables, by HF's rule (max(position_ids) + 1 > original context: long factors). No ``If`` is
left: the GPU and NPU plugins handle control flow poorly, and an IR without it reads back plainly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import BuildError


def _c(op, values, dtype=np.int64):
    return op.constant(np.array(values, dtype=dtype))


def _rotate(op, x, cos, sin):
    """Non-interleaved rotary over the whole head dim: x [B,N,S,D], cos/sin [B,1,S,D]."""
    d = x.get_partial_shape()[3].get_length()
    x1 = op.slice(x, _c(op, [0]), _c(op, [d // 2]), _c(op, [1]), _c(op, [3]))
    x2 = op.slice(x, _c(op, [d // 2]), _c(op, [d]), _c(op, [1]), _c(op, [3]))
    rotated = op.concat([op.multiply(x2, op.constant(np.float32(-1))), x1], -1)
    return op.add(op.multiply(x, cos), op.multiply(rotated, sin))


class _RotaryRows:
    """cos/sin rows [B,1,S,D] for ``position_ids`` from the GQA's cache inputs (constants or the If)."""

    def __init__(self, op, position_ids):
        self.op, self.pos = op, position_ids
        self._by_node: dict[str, Any] = {}

    def rows(self, cache_output):
        op, node = self.op, cache_output.get_node()
        key = f"{node.get_friendly_name()}:{cache_output.get_index()}"
        if key in self._by_node:
            return self._by_node[key]
        if node.get_type_name() == "If":
            large, small = (node.get_function(b).get_results()[cache_output.get_index()].input_value(0).get_node()
                            for b in (0, 1))  # body 0: then (long factors), 1: else (short factors)
            if large.get_type_name() != "Constant" or small.get_type_name() != "Constant":
                raise BuildError("the ONNX graph's LongRoPE If does not hold constant cos/sin tables",
                                 hint="use [[set]] openvino-int4.exporter=optimum-intel")
            n_small = small.get_output_shape(0)[0]
            use_large = op.greater(op.reduce_max(self.pos, _c(op, [0, 1]), False), _c(op, n_small - 1))
            g_large = op.gather(op.constant(large.get_data().copy()), self.pos, _c(op, 0))
            g_small = op.gather(op.constant(small.get_data().copy()),
                                op.minimum(self.pos, _c(op, n_small - 1)), _c(op, 0))
            picked = op.select(use_large, g_large, g_small)
        else:
            picked = op.gather(cache_output, self.pos, _c(op, 0))
        half = op.unsqueeze(picked, _c(op, [1]))  # [B,1,S,D/2]
        full = op.concat([half, half], -1)
        self._by_node[key] = full
        return full


def _repeat_kv(op, t, kv_heads: int, heads: int):
    """[B,kv,T,D] -> [B,heads,T,D], each KV head repeated heads/kv_heads times (GQA)."""
    rep = heads // kv_heads
    shape = op.shape_of(t)
    b, total, d = (op.gather(shape, _c(op, [i]), _c(op, 0)) for i in (0, 2, 3))
    t5 = op.broadcast(op.unsqueeze(t, _c(op, [2])), op.concat([b, _c(op, [kv_heads]), _c(op, [rep]), total, d], 0))
    return op.reshape(t5, op.concat([b, _c(op, [heads]), total, d], 0), False)


def _check_attributes(a: dict) -> None:
    unsupported = []
    if a.get("rotary_interleaved"):
        unsupported.append("interleaved rotary")
    if a.get("local_window_size", -1) != -1:
        unsupported.append("a sliding window")
    if a.get("smooth_softmax") or a.get("softcap", 0.0):
        unsupported.append("smooth softmax / softcap")
    if a.get("k_quant_type", "NONE") != "NONE":
        unsupported.append("a quantized KV cache")
    if unsupported:
        raise BuildError(f"the ONNX graph's GroupQueryAttention uses {', '.join(unsupported)}, which the "
                         "onnx-streaming OpenVINO route does not rebuild",
                         hint="use [[set]] openvino-int4.exporter=optimum-intel")


def replace_group_query_attention(model) -> int:
    """Rewrite every GroupQueryAttention of ``model`` (an ov.Model from the ONNX frontend) in place;
    adds the ``position_ids`` input. Returns how many were replaced."""
    import openvino as ov
    from openvino import opset13 as op

    gqas = [o for o in model.get_ordered_ops() if o.get_type_name() == "GroupQueryAttention"]
    if not gqas:
        raise BuildError("the ONNX graph has no GroupQueryAttention for the OpenVINO route to rebuild")
    position_ids = op.parameter(ov.PartialShape([-1, -1]), ov.Type.i64, name="position_ids")
    position_ids.output(0).get_tensor().set_names({"position_ids"})
    model.add_parameters([position_ids])
    rotary = _RotaryRows(op, position_ids)
    padding = op.convert(model.input("attention_mask"), ov.Type.boolean)
    for gqa in gqas:
        a = gqa.get_attributes()
        _check_attributes(a)
        heads, kv_heads = int(a["num_heads"]), int(a["kv_num_heads"])
        q, k, v, past_k, past_v = (gqa.input_value(i) for i in range(5))
        cos, sin = rotary.rows(gqa.input_value(7)), rotary.rows(gqa.input_value(8))
        q, k = _rotate(op, q, cos, sin), _rotate(op, k, cos, sin)
        present_k, present_v = op.concat([past_k, k], 2), op.concat([past_v, v], 2)
        keys, values = present_k, present_v
        if heads != kv_heads:
            keys, values = _repeat_kv(op, keys, kv_heads, heads), _repeat_kv(op, values, kv_heads, heads)
        # causal by KV index: query i (absolute position past + i) sees keys 0..past + i
        past = op.gather(op.shape_of(past_k), _c(op, [2]), _c(op, 0))
        seq = op.gather(op.shape_of(q), _c(op, [2]), _c(op, 0))
        total = op.squeeze(op.add(past, seq), _c(op, [0]))
        query_pos = op.range(op.squeeze(past, _c(op, [0])), total, _c(op, 1), "i64")
        key_pos = op.range(_c(op, 0), total, _c(op, 1), "i64")
        causal = op.less_equal(op.unsqueeze(key_pos, _c(op, [0])), op.unsqueeze(query_pos, _c(op, [1])))
        mask = op.logical_and(op.unsqueeze(causal, _c(op, [0, 1])), op.unsqueeze(padding, _c(op, [1, 2])))
        attended = op.scaled_dot_product_attention(q, keys, values, mask,
                                                   op.constant(np.float32(a["scale"])), causal=False)
        out = op.reshape(op.transpose(attended, _c(op, [0, 2, 1, 3])), _c(op, [0, 0, -1]), True)  # [B,S,N*D]
        for i, new in enumerate((out.output(0), present_k.output(0), present_v.output(0))):
            old = gqa.output(i)
            names = old.get_names()
            old.replace(new)
            new.get_tensor().set_names(names)
    model.validate_nodes_and_infer_types()
    return len(gqas)
