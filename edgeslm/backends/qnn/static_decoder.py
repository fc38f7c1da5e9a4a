"""The Phi-3 decoder as static-shape graphs the Hexagon HTP accepts (build side, torch).

A plain-torch re-implementation from the checkpoint's tensors (no transformers cache machinery, no
dynamic shapes, no Shape/Gather ops): RMSNorm, fused ``qkv_proj`` sliced with constant sizes, rotate-half
RoPE with ``cos``/``sin`` given as inputs, softmax attention over a fixed-length past plus the new
tokens under an additive mask, fused ``gate_up_proj`` SiLU MLP, final norm, LM head. The embedding
lookup stays on the host. The decoder is cut into parts of consecutive layers (``part_plan.py``); each
part is its own pair of graphs. Graph I/O (per graph, T = prefill chunk or 1, CTX = context length):

  inputs   inputs_embeds (first part) or hidden_states (the others) [1,T,hidden], cos/sin [1,T,head_dim],
           attention_mask [1,1,T,CTX+T], past_key_i / past_value_i [1,kv_heads,CTX,head_dim] for each
           layer i of the part (global layer numbers)
  outputs  logits [1,T,vocab] (last part: final norm + LM head) or hidden_states_out [1,T,hidden],
           present_key_i / present_value_i [1,kv_heads,T,head_dim] (the new tokens only: the host writes
           them into its cache)

Graphs are exported at opset 20 and declared opset 21 (``declare_opset_21``): the 16-bit activations of
the QDQ step need 21, and every op between 20 and 21 only gained element types (onnx's version converter
adapts them unchanged). Letting onnxruntime's quantizer convert a loaded graph instead cost 11 s per graph
of one full-width layer (``quantizer_speedups`` has the profile).

The host's mask (kv_cache_loop.MASK_VALUE) uses -100 rather than -inf so that the 16-bit activation
scale of the scores stays fine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def io_names(layers: range, first: bool = True, last: bool = True) -> tuple[list[str], list[str]]:
    inputs = ["inputs_embeds" if first else "hidden_states", "cos", "sin", "attention_mask"]
    outputs = ["logits" if last else "hidden_states_out"]
    for i in layers:
        inputs += [f"past_key_{i}", f"past_value_{i}"]
        outputs += [f"present_key_{i}", f"present_value_{i}"]
    return inputs, outputs


def build_module(tensors: dict[str, Any], config: dict[str, Any], layers: range | None = None,
                 last: bool = True) -> Any:
    """The static graph module of ``layers`` (default: all), with the final norm and LM head if ``last``.
    ``tensors`` needs only those layers' weights (and the head's for the last part)."""
    import torch

    layer_ids = list(layers if layers is not None else range(int(config["num_hidden_layers"])))

    class StaticPhi3(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = len(layer_ids)
            self.last = last
            self.heads = int(config["num_attention_heads"])
            self.kv_heads = int(config.get("num_key_value_heads") or self.heads)
            self.head_dim = int(config.get("head_dim") or config["hidden_size"] // self.heads)
            self.eps = float(config["rms_norm_eps"])

            def param(name: str) -> Any:
                return torch.nn.Parameter(tensors[name].float(), requires_grad=False)

            def linear(name: str) -> Any:
                weight = tensors[name].float()
                layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                layer.weight = torch.nn.Parameter(weight, requires_grad=False)
                return layer

            prefix = "model.layers"
            self.ln1 = torch.nn.ParameterList([param(f"{prefix}.{i}.input_layernorm.weight") for i in layer_ids])
            self.ln2 = torch.nn.ParameterList(
                [param(f"{prefix}.{i}.post_attention_layernorm.weight") for i in layer_ids])
            self.qkv = torch.nn.ModuleList([linear(f"{prefix}.{i}.self_attn.qkv_proj.weight") for i in layer_ids])
            self.o = torch.nn.ModuleList([linear(f"{prefix}.{i}.self_attn.o_proj.weight") for i in layer_ids])
            self.gate_up = torch.nn.ModuleList([linear(f"{prefix}.{i}.mlp.gate_up_proj.weight") for i in layer_ids])
            self.down = torch.nn.ModuleList([linear(f"{prefix}.{i}.mlp.down_proj.weight") for i in layer_ids])
            if last:
                self.norm = param("model.norm.weight")
                self.lm_head = linear("lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight")

        def rms(self, x: Any, weight: Any) -> Any:
            # RMSNorm with every intermediate bounded per token, for 16-bit activations: each token is first
            # divided by its largest |x| (so y in [-1, 1] and mean(y²) in [1/hidden, 1]), and eps enters as
            # eps / m². The plain x.pow(2) has one scale for all tokens: image features (rms ~7) next to text
            # embeddings (rms ~0.05) left the text tokens' squares below one quantization step (docs/qnn.md).
            m = x.abs().amax(-1, keepdim=True).clamp_min(1e-4)  # a zero token stays zero, not NaN
            y = x / m
            return weight * (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps / (m * m)))

        @staticmethod
        def rotate(x: Any, cos: Any, sin: Any) -> Any:
            half = x.shape[-1] // 2
            return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

        def forward(self, inputs_embeds: Any, cos: Any, sin: Any, attention_mask: Any, *past: Any) -> tuple:
            steps = inputs_embeds.shape[1]
            x, cos, sin = inputs_embeds, cos.unsqueeze(1), sin.unsqueeze(1)
            q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
            outputs: list[Any] = []
            for i in range(self.layers):
                h = self.rms(x, self.ln1[i])
                qkv = self.qkv[i](h)
                q = qkv[..., :q_width].reshape(1, steps, self.heads, self.head_dim).transpose(1, 2)
                k = qkv[..., q_width:q_width + kv_width].reshape(1, steps, self.kv_heads, self.head_dim).transpose(1, 2)
                v = qkv[..., q_width + kv_width:].reshape(1, steps, self.kv_heads, self.head_dim).transpose(1, 2)
                q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
                outputs += [k, v]
                keys, values = torch.cat([past[2 * i], k], 2), torch.cat([past[2 * i + 1], v], 2)
                if self.kv_heads != self.heads:
                    keys = keys.repeat_interleave(self.heads // self.kv_heads, 1)
                    values = values.repeat_interleave(self.heads // self.kv_heads, 1)
                scores = torch.matmul(q, keys.transpose(2, 3)) * (self.head_dim ** -0.5) + attention_mask
                attended = torch.matmul(torch.softmax(scores, -1), values).transpose(1, 2).reshape(1, steps, q_width)
                x = x + self.o[i](attended)
                gate_up = self.gate_up[i](self.rms(x, self.ln2[i]))
                inner = gate_up.shape[-1] // 2
                x = x + self.down[i](gate_up[..., inner:] * torch.nn.functional.silu(gate_up[..., :inner]))
            return (self.lm_head(self.rms(x, self.norm)) if self.last else x, *outputs)

    return StaticPhi3().eval()


def export_graph(module: Any, config: dict[str, Any], steps: int, context: int, path: Path,
                 layers: range | None = None, first: bool = True, last: bool = True) -> None:
    """Export one static graph (``steps`` new tokens over a ``context``-token cache) to ONNX (fp32)."""
    import torch

    layers = layers if layers is not None else range(int(config["num_hidden_layers"]))
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    example = [torch.zeros(1, steps, int(config["hidden_size"])), torch.zeros(1, steps, head_dim),
               torch.zeros(1, steps, head_dim), torch.zeros(1, 1, steps, context + steps)]
    example += [torch.zeros(1, kv_heads, context, head_dim) for _ in range(2 * len(layers))]
    inputs, outputs = io_names(layers, first, last)
    with torch.no_grad():
        torch.onnx.export(module, tuple(example), str(path), input_names=inputs, output_names=outputs,
                          opset_version=20, dynamo=False)
    declare_opset_21(path)


# ops of opset 20 that opset 21 leaves as they are, or whose 20 -> 21 step in onnx's version converter is a
# CompatibleAdapter (types added only)
_SAME_IN_21 = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "MatMul", "ReduceMean", "Softmax",
               "Sigmoid", "Concat", "Slice", "Split", "Gather", "Expand", "Where", "Equal", "Tile", "Range",
               "Cast", "CastLike", "Constant", "ConstantOfShape", "Flatten", "Identity", "Reshape", "Shape",
               "Size", "Squeeze", "Transpose", "Unsqueeze", "Abs", "ReduceMax", "Clip", "Conv", "LayerNormalization",
               "Gelu", "Erf", "Tanh"}


def declare_opset_21(path: Path) -> None:
    """Raise the exported graph's default-domain opset from 20 to 21 in place (external data untouched)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    unknown = {n.op_type for n in model.graph.node} - _SAME_IN_21
    if unknown:
        model = onnx.version_converter.convert_version(model, 21)
    else:
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = 21
        model.ir_version = max(model.ir_version, 10)
    onnx.save(model, str(path))
