"""The Phi-3 decoder graph that onnxruntime-genai runs, built with ``onnx_ir`` from lazy weights.

Same operators, wiring and names as onnxruntime-genai 0.18's builder for Phi-3/3.5-mini (read from
``builders/base.py`` and ``phi.py``): embedding Gather (or GatherBlockQuantized for an int4 table;
fp16 table + Cast on CPU), SimplifiedLayerNormalization for the first norm and
SkipSimplifiedLayerNormalization (residual add fused) after, packed qkv MatMulNBits ->
GroupQueryAttention (rotary inside, cos/sin caches; LongRoPE: small/large caches picked by an ``If``
on total length > original context), o_proj, gate/up MatMulNBits -> x*sigmoid(x) * up -> down,
final norm, lm_head. Inputs ``input_ids`` (or ``inputs_embeds``), ``attention_mask``,
``past_key_values.N.key/value``; outputs ``logits``, ``present.N.key/value``.

``precision=None`` builds plain MatMuls on fp32 weights (the unquantized reference), and a layer
range with ``hidden_output`` builds one segment of the stack (hidden states in, hidden states out)
so that the reference can run one layer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_ir as ir

from ...model_shape import ModelShape
from .lazy_weights import LazyWeights
from .rotary_caches import RotaryPlan, caches

MS = "com.microsoft"
_FLOAT = {"float32": ir.DataType.FLOAT, "float16": ir.DataType.FLOAT16}


@dataclass(frozen=True)
class DecoderPlan:
    shape: ModelShape
    rotary: RotaryPlan
    eps: float
    io_dtype: Literal["float32", "float16"] = "float32"
    bits: int | None = 4  # None: unquantized MatMul (reference)
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    quantize_lm_head: bool = True
    embedding: Literal["float32", "float16", "int4"] = "float32"
    embedding_block: int = 32  # block size of an int4 table (must divide hidden_size)
    inputs_embeds: bool = False  # the decoder takes embeddings (vision models embed outside)
    first_layer: int = 0
    end_layer: int | None = None  # None: all layers
    hidden_output: bool = False  # end with the residual stream instead of norm + lm_head

    @property
    def layer_range(self) -> range:
        return range(self.first_layer, self.shape.layers if self.end_layer is None else self.end_layer)


class _Graph:
    def __init__(self, plan: DecoderPlan, weights: LazyWeights):
        self.plan, self.weights = plan, weights
        self.tape = ir.tape.Tape()
        self.io = _FLOAT[plan.io_dtype]
        self.np_io = np.float32 if plan.io_dtype == "float32" else np.float16
        self.inputs: list[ir.Value] = []
        self.outputs: list[ir.Value] = []
        self._constants: dict[str, ir.Value] = {}

    def op(self, op_type: str, inputs, name: str, domain: str = "", **attributes) -> ir.Value:
        return self.tape.op(op_type, inputs, attributes or None, domain=domain, name=name)

    def const(self, values, dtype=np.int64) -> ir.Value:
        array = np.asarray(values, dtype=dtype)
        key = f"/model/constants/{array.dtype.name.upper()}/{values}"
        if key not in self._constants:
            self._constants[key] = self.tape.op("Constant", [], {"value": ir.Tensor(array, name=key)}, name=key)
        return self._constants[key]

    def initializer(self, tensor) -> ir.Value:
        return self.tape.initializer(tensor)

    def value(self, name: str, dtype, dims) -> ir.Value:
        return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(dims))

    # -- building blocks -------------------------------------------------------------------------
    def matmul(self, x: ir.Value, hf_name: str, onnx_prefix: str, node: str, rows: slice | None = None,
               quantize: bool = True) -> ir.Value:
        plan = self.plan
        if plan.bits is None or not quantize:
            weight = self.initializer(self.weights.dense(hf_name, f"{onnx_prefix}.weight", rows))
            return self.op("MatMul", [x, weight], f"{node}/MatMul")
        q = self.weights.quantized(hf_name, onnx_prefix, plan.bits, plan.block_size, plan.symmetric, rows)
        inputs = [x, self.initializer(q.packed), self.initializer(q.scales)]
        if q.zero_points is not None:
            inputs.append(self.initializer(q.zero_points))
        return self.op("MatMulNBits", inputs, f"{node}/MatMul_Q{plan.bits}", MS, K=q.k, N=q.n, bits=plan.bits,
                       block_size=plan.block_size, accuracy_level=plan.accuracy_level)

    def norm_weight(self, hf_name: str, onnx_name: str) -> ir.Value:
        return self.initializer(self.weights.vector(hf_name, onnx_name))

    def first_norm(self, x: ir.Value, layer: int) -> ir.Value:
        w = self.norm_weight(f"model.layers.{layer}.input_layernorm.weight", f"model.layers.{layer}.input_layernorm.weight")
        return self.op("SimplifiedLayerNormalization", [x, w], f"/model/layers.{layer}/input_layernorm/LayerNorm",
                       epsilon=self.plan.eps, axis=-1, stash_type=1)

    def skip_norm(self, residual: ir.Value, delta: ir.Value, w: ir.Value, node: str,
                  want_sum: bool = True) -> tuple[ir.Value, ir.Value | None]:
        outs = self.tape.op_multi_out("SkipSimplifiedLayerNormalization", [residual, delta, w],
                                      {"epsilon": self.plan.eps}, num_outputs=4 if want_sum else 1, domain=MS,
                                      name=f"{node}/SkipLayerNorm")
        return outs[0], (outs[3] if want_sum else None)

    # -- the model -------------------------------------------------------------------------------
    def build(self) -> ir.Model:
        plan, shape = self.plan, self.plan.shape
        batch, seq, total, past = "batch_size", "sequence_length", "total_sequence_length", "past_sequence_length"
        if plan.inputs_embeds or plan.first_layer > 0:
            hidden = self.value("inputs_embeds", self.io, [batch, seq, shape.hidden_size])
            self.inputs.append(hidden)
        else:
            ids = self.value("input_ids", ir.DataType.INT64, [batch, seq])
            self.inputs.append(ids)
        mask = self.value("attention_mask", ir.DataType.INT64, [batch, total])
        self.inputs.append(mask)
        layers = plan.layer_range
        pasts = {}
        for kind in ("key", "value"):
            for i in layers:
                pasts[(i, kind)] = self.value(f"past_key_values.{i}.{kind}", self.io,
                                              [batch, shape.kv_heads, past, shape.head_dim])
                self.inputs.append(pasts[(i, kind)])

        sub = "/model/attn_mask_reformat/attn_mask_subgraph"
        total_len = self.op("Gather", [self.op("Shape", [mask], f"{sub}/Shape"), self.const(1)], f"{sub}/Gather", axis=0)
        cos, sin = self.rotary_caches(total_len)
        summed = self.op("ReduceSum", [mask, self.const([1])], f"{sub}/ReduceSum", keepdims=0)
        seqlens_k = self.op("Cast", [self.op("Sub", [summed, self.const([1])], f"{sub}/Sub")], f"{sub}/Sub/Cast",
                            to=ir.DataType.INT32)
        total_i32 = self.op("Cast", [total_len], f"{sub}/Gather/Cast", to=ir.DataType.INT32)

        if not (plan.inputs_embeds or plan.first_layer > 0):
            hidden = self.embedding(ids)
        presents: dict[tuple[int, str], ir.Value] = {}
        residual: ir.Value = hidden
        normed = self.first_norm(hidden, layers.start)
        for i in layers:
            residual, normed, presents[(i, "key")], presents[(i, "value")], down = self.layer(
                i, residual, normed, pasts, seqlens_k, total_i32, cos, sin)
            if i + 1 in layers:
                w = self.norm_weight(f"model.layers.{i + 1}.input_layernorm.weight",
                                     f"model.layers.{i + 1}.input_layernorm.weight")
                normed, residual = self.skip_norm(residual, down, w, f"/model/layers.{i + 1}/input_layernorm")
        if plan.hidden_output:
            out = self.op("Add", [residual, down], f"/model/layers.{layers.stop - 1}/residual/Add")
            out.name = "hidden_states"
            out.type, out.shape = ir.TensorType(self.io), ir.Shape([batch, seq, shape.hidden_size])
            self.outputs.append(out)
        else:
            last = shape.layers
            w = self.norm_weight("model.norm.weight", f"model.layers.{last}.final_norm_layernorm.weight")
            final, _ = self.skip_norm(residual, down, w, f"/model/layers.{last}/final_norm_layernorm", want_sum=False)
            logits = self.matmul(final, "lm_head.weight", "lm_head.MatMul", "/lm_head", quantize=plan.quantize_lm_head)
            logits.name = "logits"
            logits.type, logits.shape = ir.TensorType(self.io), ir.Shape([batch, seq, shape.vocab_size])
            self.outputs.append(logits)
        for kind in ("key", "value"):
            for i in layers:
                present = presents[(i, kind)]
                present.name = f"present.{i}.{kind}"
                present.type = ir.TensorType(self.io)
                present.shape = ir.Shape([batch, shape.kv_heads, total, shape.head_dim])
                self.outputs.append(present)
        graph = ir.Graph(self.inputs, self.outputs, nodes=self.tape.nodes, initializers=self.tape.initializers,
                         opset_imports={"": 22, MS: 1}, name="main_graph")
        return ir.Model(graph, ir_version=10, producer_name="edgeslm")

    def embedding(self, ids: ir.Value) -> ir.Value:
        plan, name = self.plan, "model.embed_tokens.weight"
        if plan.embedding == "int4":
            data, scales = self.weights.quantized_table(name, "model.embed_tokens", plan.embedding_block)
            return self.op("GatherBlockQuantized", [self.initializer(data), ids, self.initializer(scales)],
                           "/model/embed_tokens/GatherBlockQuantized", MS, bits=4, block_size=plan.embedding_block,
                           gather_axis=0, quantize_axis=1)
        table_dtype = np.float16 if plan.embedding == "float16" else np.float32
        table = self.initializer(self.weights.table(name, name, table_dtype))
        gathered = self.op("Gather", [table, ids], "/model/embed_tokens/Gather")
        if np.dtype(table_dtype) != np.dtype(self.np_io):
            gathered = self.op("Cast", [gathered], "/model/embed_tokens/Cast", to=self.io)
        return gathered

    def rotary_caches(self, total_len: ir.Value) -> tuple[ir.Value, ir.Value]:
        tables = caches(self.plan.rotary, self.np_io)
        if "single" in tables:
            cos, sin = tables["single"]
            return (self.initializer(ir.Tensor(cos, name="cos_cache")),
                    self.initializer(ir.Tensor(sin, name="sin_cache")))
        branches = {}
        for size in ("large", "small"):
            cos, sin = tables[size]
            tape = ir.tape.Tape()
            outs = [tape.op("Constant", [], {"value": ir.Tensor(cos, name=f"cos_cache_{size}")}, name=f"cos_{size}"),
                    tape.op("Constant", [], {"value": ir.Tensor(sin, name=f"sin_cache_{size}")}, name=f"sin_{size}")]
            for out, kind in zip(outs, ("cos", "sin")):
                out.name = f"{kind}_cache_{size}"
                out.type, out.shape = ir.TensorType(self.io), ir.Shape(list(cos.shape))
            branches[size] = ir.Graph([], outs, nodes=tape.nodes, name=f"{size}_rope_caches_graph")
        greater = self.op("Greater", [total_len, self.const(self.plan.rotary.original_context_length)],
                          "/model/rope_caches_subgraph/Greater")
        cos, sin = self.tape.op_multi_out("If", [greater], {"then_branch": branches["large"],
                                                            "else_branch": branches["small"]},
                                          num_outputs=2, name="/model/rope_caches_subgraph/If")
        cos.name, sin.name = "cos_cache", "sin_cache"
        return cos, sin

    def layer(self, i: int, residual: ir.Value, normed: ir.Value, pasts, seqlens_k, total, cos, sin):
        shape, base = self.plan.shape, f"/model/layers.{i}"
        hf = f"model.layers.{i}"
        qkv = self.matmul(normed, f"{hf}.self_attn.qkv_proj.weight", f"{hf}.attn.qkv_proj.MatMul", f"{base}/attn/qkv_proj")
        attn, present_k, present_v = self.tape.op_multi_out(
            "GroupQueryAttention", [qkv, None, None, pasts[(i, "key")], pasts[(i, "value")], seqlens_k, total, cos, sin],
            {"num_heads": shape.heads, "kv_num_heads": shape.kv_heads, "scale": float(shape.head_dim ** -0.5),
             "local_window_size": -1, "softcap": 0.0, "do_rotary": 1, "rotary_interleaved": 0},
            num_outputs=3, domain=MS, name=f"{base}/attn/GroupQueryAttention")
        o = self.matmul(attn, f"{hf}.self_attn.o_proj.weight", f"{hf}.attn.o_proj.MatMul", f"{base}/attn/o_proj")
        w = self.norm_weight(f"{hf}.post_attention_layernorm.weight", f"{hf}.post_attention_layernorm.weight")
        normed, residual = self.skip_norm(residual, o, w, f"{base}/post_attention_layernorm")
        inter = shape.intermediate_size
        gate = self.matmul(normed, f"{hf}.mlp.gate_up_proj.weight", f"{hf}.mlp.gate_proj.MatMul", f"{base}/mlp/gate_proj",
                           rows=slice(0, inter))
        up = self.matmul(normed, f"{hf}.mlp.gate_up_proj.weight", f"{hf}.mlp.up_proj.MatMul", f"{base}/mlp/up_proj",
                         rows=slice(inter, 2 * inter))
        act = self.op("Mul", [gate, self.op("Sigmoid", [gate], f"{base}/mlp/act_fn/Sigmoid")], f"{base}/mlp/act_fn/Mul")
        down = self.matmul(self.op("Mul", [act, up], f"{base}/mlp/Mul"), f"{hf}.mlp.down_proj.weight",
                           f"{hf}.mlp.down_proj.MatMul", f"{base}/mlp/down_proj")
        return residual, normed, present_k, present_v, down


def build_decoder(plan: DecoderPlan, weights: LazyWeights) -> ir.Model:
    """The decoder as an in-memory IR whose initializers are lazy (nothing is read yet)."""
    return _Graph(plan, weights).build()


def needed_tensors(shape: ModelShape, layers: range, embed: bool, head: bool) -> dict[str, tuple[int, ...]]:
    """The checkpoint tensors a decoder (segment) reads and the shapes the config implies, to check
    before any work (a config that does not match its weights would otherwise export garbage)."""
    h, q, kv = shape.hidden_size, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    names: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (shape.vocab_size, h)} if embed else {}
    for i in layers:
        names.update({f"model.layers.{i}.input_layernorm.weight": (h,),
                      f"model.layers.{i}.self_attn.qkv_proj.weight": (q + 2 * kv, h),
                      f"model.layers.{i}.self_attn.o_proj.weight": (h, q),
                      f"model.layers.{i}.post_attention_layernorm.weight": (h,),
                      f"model.layers.{i}.mlp.gate_up_proj.weight": (2 * shape.intermediate_size, h),
                      f"model.layers.{i}.mlp.down_proj.weight": (h, shape.intermediate_size)})
    if head:
        names.update({"model.norm.weight": (h,), "lm_head.weight": (shape.vocab_size, h)})
    return names
