"""How the decoder is cut into parts of consecutive layers, each compiled into its own context binaries.

A part must stay small at every build stage: its float32 ONNX graph is under protobuf's 2 GB limit, and
its calibration + QDQ step (onnxruntime's quantizer holds about seven float copies of the part: measured
8.9 GB peak for a 1.3 GB part, docs/benchmarks.md) must fit a 16 GB workstation; on the device one context
binary (w4: ~0.5 byte per weight) stays well under the HTP's per-context limit. ``plan_parts`` fills parts
with layers up to ``budget_bytes`` of float32 weights (the last part also carries the final norm and the LM
head), or takes ``part_layers`` layers per part when that is set. The demo model is one part; the full
Phi-3.5-mini (453 MB of float32 weights per layer, a 394 MB LM head) is 32 one-layer parts at the default
budget of 900 MB.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...model_shape import ModelShape

GRAPHS = ("prefill", "decode")


@dataclass(frozen=True)
class DecoderPart:
    index: int
    start: int  # first layer (global)
    stop: int  # one past the last layer
    last: bool

    @property
    def layers(self) -> range:
        return range(self.start, self.stop)

    @property
    def first(self) -> bool:
        return self.start == 0

    @property
    def input_name(self) -> str:
        return "inputs_embeds" if self.first else "hidden_states"

    def graph_name(self, graph: str) -> str:
        return f"part{self.index}_{graph}"

    def tensor_names(self, tied_head: bool) -> list[str]:
        names = []
        for i in self.layers:
            p = f"model.layers.{i}"
            names += [f"{p}.input_layernorm.weight", f"{p}.post_attention_layernorm.weight",
                      f"{p}.self_attn.qkv_proj.weight", f"{p}.self_attn.o_proj.weight",
                      f"{p}.mlp.gate_up_proj.weight", f"{p}.mlp.down_proj.weight"]
        if self.last:
            names += ["model.norm.weight", "model.embed_tokens.weight" if tied_head else "lm_head.weight"]
        return names


def layer_weight_bytes(config: dict) -> tuple[int, int]:
    """float32 bytes of one decoder layer's weights and of the final norm + LM head."""
    shape = ModelShape.of(config)
    hidden, inter = shape.hidden_size, int(config["intermediate_size"])
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    layer = hidden * (q + 2 * kv) + q * hidden + hidden * 2 * inter + inter * hidden + 2 * hidden
    return 4 * layer, 4 * (hidden * shape.vocab_size + hidden)


def plan_parts(config: dict, part_layers: int = 0, budget_bytes: int = 900_000_000) -> list[DecoderPart]:
    layers = ModelShape.of(config).layers
    if part_layers:
        sizes = [min(part_layers, layers - s) for s in range(0, layers, part_layers)]
    else:
        layer, head = layer_weight_bytes(config)
        per_part = max(1, budget_bytes // layer)
        last = max(1, (budget_bytes - head) // layer) if budget_bytes > head + layer else 1
        sizes = [min(last, layers)]
        rest = layers - sizes[0]
        count = -(-rest // per_part) if rest else 0
        sizes = [*_even(rest, count), *sizes]
    parts, start = [], 0
    for index, size in enumerate(sizes):
        parts.append(DecoderPart(index, start, start + size, index == len(sizes) - 1))
        start += size
    return parts


def _even(total: int, count: int) -> list[int]:
    """``total`` layers in ``count`` parts as equal as possible (the larger ones first)."""
    if not count:
        return []
    base, extra = divmod(total, count)
    return [base + (i < extra) for i in range(count)]
