"""Phi-3.5-vision's image encoder as one ONNX graph: CLIP on the crops → 2×2 merge → HD layout → MLP.

The vision part of onnxruntime-genai's ``phi3v`` model: inputs ``pixel_values`` [images, crops, 3,
336, 336] (global image first, then the sub-crops row-major, then zero crops) and ``image_sizes``
[images, 2] (height, width of each HD image); output ``image_features`` [image tokens, hidden], in
the order the embedding part writes them at the prompt's negative ids. It follows the checkpoint's
``Phi3ImageEmbedding`` (HD transform ``sub_glb``, learnable separators, MLP projection):

1. only the crops an image uses (1 + h·w of its h×w grid) go through CLIP (``Compress``): a 1×2 image
   at ``num_crops`` 4 skips two of the five crops;
2. CLIP ViT: patch Conv, class token, position table, ``pre_layrnorm``, then the encoder layers up to
   the feature layer (``hidden_states[-2]``: the last layer and ``post_layernorm`` are never run),
   the class token dropped;
3. each crop's 24×24 patches are merged 2×2 into 144 tokens of 4·C features;
4. one index per output token picks, from the merged crop tokens plus the two separators, each
   image's sub-crop grid (12h rows of 12w tokens and a ``sub_GN`` newline), ``glb_GN``, then the
   global crop (12 rows of 12 and a newline). The indices are computed from ``image_sizes`` with
   integer arithmetic for all images at once (no loop), and one ``Gather`` lays the tokens out;
5. ``img_projection``: Linear → GELU (erf) → Linear.

CLIP's and the projection's linear layers are int8 (or int4) MatMulNBits, or fp32 MatMuls with ``bits=None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import onnx_ir as ir

from .graph_tape import FLOAT, MS, GraphTape
from .lazy_weights import LazyWeights

PREFIX = "model.vision_embed_tokens."
CLIP = PREFIX + "img_processor.vision_model."


@dataclass(frozen=True)
class VisionPlan:
    clip_hidden: int
    clip_heads: int
    clip_intermediate: int
    clip_layers_run: int  # encoder layers computed: the feature layer's index in hidden_states
    clip_eps: float
    clip_act: Literal["quick_gelu", "gelu"]
    text_hidden: int
    image_size: int = 336
    patch_size: int = 14
    bits: int | None = 8  # CLIP and projection MatMuls: None = fp32
    block_size: int = 32
    accuracy_level: int = 4
    output_dtype: Literal["float32", "float16"] = "float32"

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_crop(self) -> int:
        return (self.grid // 2) ** 2

    def needed_tensors(self) -> dict[str, tuple[int, ...]]:
        c, f, h = self.clip_hidden, self.clip_intermediate, self.text_hidden
        names: dict[str, tuple[int, ...]] = {
            CLIP + "embeddings.class_embedding": (c,),
            CLIP + "embeddings.patch_embedding.weight": (c, 3, self.patch_size, self.patch_size),
            CLIP + "embeddings.position_embedding.weight": (self.grid ** 2 + 1, c),
            CLIP + "pre_layrnorm.weight": (c,), CLIP + "pre_layrnorm.bias": (c,),
            PREFIX + "img_projection.0.weight": (h, 4 * c), PREFIX + "img_projection.0.bias": (h,),
            PREFIX + "img_projection.2.weight": (h, h), PREFIX + "img_projection.2.bias": (h,),
            PREFIX + "glb_GN": (1, 1, 4 * c), PREFIX + "sub_GN": (1, 1, 1, 4 * c),
        }
        for i in range(self.clip_layers_run):
            layer = f"{CLIP}encoder.layers.{i}."
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                names[f"{layer}self_attn.{proj}.weight"] = (c, c)
                names[f"{layer}self_attn.{proj}.bias"] = (c,)
            for norm in ("layer_norm1", "layer_norm2"):
                names[f"{layer}{norm}.weight"] = (c,)
                names[f"{layer}{norm}.bias"] = (c,)
            names.update({f"{layer}mlp.fc1.weight": (f, c), f"{layer}mlp.fc1.bias": (f,),
                          f"{layer}mlp.fc2.weight": (c, f), f"{layer}mlp.fc2.bias": (c,)})
        return names


class _VisionGraph:
    def __init__(self, plan: VisionPlan, weights: LazyWeights):
        self.plan, self.weights = plan, weights
        self.g = GraphTape("/vision")

    def linear(self, x: ir.Value, hf: str, quantize: bool = True) -> ir.Value:
        g, plan = self.g, self.plan
        bias = g.initializer(self.weights.vector(f"{hf}.bias", f"{hf}.bias"))
        if plan.bits is None or not quantize:
            y = g.op("MatMul", [x, g.initializer(self.weights.dense(f"{hf}.weight", f"{hf}.weight"))])
        else:
            q = self.weights.quantized(f"{hf}.weight", hf, plan.bits, plan.block_size, True)
            y = g.op("MatMulNBits", [x, g.initializer(q.packed), g.initializer(q.scales)], "MatMulNBits", MS,
                     K=q.k, N=q.n, bits=plan.bits, block_size=plan.block_size, accuracy_level=plan.accuracy_level)
        return g.op("Add", [y, bias])

    def layer_norm(self, x: ir.Value, hf: str) -> ir.Value:
        g = self.g
        weight = g.initializer(self.weights.vector(f"{hf}.weight", f"{hf}.weight"))
        bias = g.initializer(self.weights.vector(f"{hf}.bias", f"{hf}.bias"))
        return g.op("LayerNormalization", [x, weight, bias], "LayerNorm", axis=-1, epsilon=self.plan.clip_eps)

    def activation(self, x: ir.Value) -> ir.Value:
        g = self.g
        if self.plan.clip_act == "gelu":
            return g.op("Gelu", [x], "Gelu", MS)
        scaled = g.op("Mul", [x, g.const(1.702, "float32")])
        return g.op("Mul", [x, g.op("Sigmoid", [scaled])])

    def build(self) -> ir.Model:
        g, plan = self.g, self.plan
        c, size = plan.clip_hidden, plan.image_size
        pixels = g.input("pixel_values", ir.DataType.FLOAT, ["num_images", "max_num_crops", 3, size, size])
        sizes = g.input("image_sizes", ir.DataType.INT64, ["num_images", 2])

        rows = g.op("Div", [g.op("Gather", [sizes, g.const(0)], axis=1), g.const(size)])  # crop grid h [N]
        cols = g.op("Div", [g.op("Gather", [sizes, g.const(1)], axis=1), g.const(size)])  # crop grid w [N]
        used = g.op("Add", [g.op("Mul", [rows, cols]), g.const(1)])  # crops per image, global included
        max_crops = g.op("Gather", [g.op("Shape", [pixels]), g.const(1)], axis=0)
        crop_ids = g.op("Unsqueeze", [g.op("Range", [g.const(0), max_crops, g.const(1)]), g.const([0])])
        keep = g.op("Less", [crop_ids, g.op("Unsqueeze", [used, g.const([1])])])  # [N, crops]
        flat = g.op("Reshape", [pixels, g.const([-1, 3, size, size])])
        crops = g.op("Compress", [flat, g.op("Reshape", [keep, g.const([-1])])], axis=0)  # [M, 3, 336, 336]

        features = self.clip(crops)  # [M, grid², C]
        half = plan.grid // 2
        merged = g.op("Reshape", [features, g.const([-1, half, 2, half, 2, c])])
        merged = g.op("Transpose", [merged], perm=[0, 1, 3, 2, 4, 5])
        merged = g.op("Reshape", [merged, g.const([-1, 4 * c])])  # [M·144, 4C]
        sub_gn = g.initializer(self.weights.array(PREFIX + "sub_GN", PREFIX + "sub_GN", (1, 4 * c)))
        glb_gn = g.initializer(self.weights.array(PREFIX + "glb_GN", PREFIX + "glb_GN", (1, 4 * c)))
        bank = g.op("Concat", [merged, sub_gn, glb_gn], axis=0)
        newline = g.op("Gather", [g.op("Shape", [merged]), g.const(0)], axis=0)  # index of sub_GN in the bank
        indices = self.layout(rows, cols, used, newline)
        tokens = g.op("Gather", [bank, indices], axis=0)  # [T, 4C]

        projected = self.linear(tokens, PREFIX + "img_projection.0")
        projected = g.op("Gelu", [projected], "Gelu", MS)
        projected = self.linear(projected, PREFIX + "img_projection.2")
        out_type = FLOAT[plan.output_dtype]
        if plan.output_dtype != "float32":
            projected = g.op("Cast", [projected], to=out_type)
        g.output(projected, "image_features", out_type, ["num_image_tokens", plan.text_hidden])
        return g.model("phi3v_vision")

    def clip(self, crops: ir.Value) -> ir.Value:
        g, plan, w = self.g, self.plan, self.weights
        c = plan.clip_hidden
        kernel = g.initializer(w.array(CLIP + "embeddings.patch_embedding.weight",
                                       CLIP + "embeddings.patch_embedding.weight"))
        patches = g.op("Conv", [crops, kernel], "PatchConv", strides=[plan.patch_size] * 2,
                       kernel_shape=[plan.patch_size] * 2)
        patches = g.op("Transpose", [g.op("Reshape", [patches, g.const([0, c, -1])])], perm=[0, 2, 1])  # [M, 576, C]
        cls = g.initializer(w.array(CLIP + "embeddings.class_embedding", CLIP + "embeddings.class_embedding",
                                    (1, 1, c)))
        count = g.op("Gather", [g.op("Shape", [patches]), g.const([0])], axis=0)
        cls = g.op("Expand", [cls, g.op("Concat", [count, g.const([1, c])], axis=0)])
        hidden = g.op("Concat", [cls, patches], axis=1)
        positions = g.initializer(w.array(CLIP + "embeddings.position_embedding.weight",
                                          CLIP + "embeddings.position_embedding.weight"))
        hidden = self.layer_norm(g.op("Add", [hidden, positions]), CLIP + "pre_layrnorm")
        for i in range(plan.clip_layers_run):
            layer = f"{CLIP}encoder.layers.{i}"
            normed = self.layer_norm(hidden, f"{layer}.layer_norm1")
            q, k, v = (self.linear(normed, f"{layer}.self_attn.{p}_proj") for p in ("q", "k", "v"))
            attended = g.op("MultiHeadAttention", [q, k, v], "Attention", MS, num_heads=plan.clip_heads)
            hidden = g.op("Add", [hidden, self.linear(attended, f"{layer}.self_attn.out_proj")])
            normed = self.layer_norm(hidden, f"{layer}.layer_norm2")
            mlp = self.linear(self.activation(self.linear(normed, f"{layer}.mlp.fc1")), f"{layer}.mlp.fc2")
            hidden = g.op("Add", [hidden, mlp])
        return g.op("Slice", [hidden, g.const([1]), g.const([plan.grid ** 2 + 1]), g.const([1])])

    def layout(self, rows: ir.Value, cols: ir.Value, used: ir.Value, newline: ir.Value) -> ir.Value:
        """Per output token, its row in the bank [merged crop tokens; sub_GN; glb_GN], all images at once."""
        g, per_crop, side = self.g, self.plan.tokens_per_crop, self.plan.grid // 2

        def column(x: ir.Value) -> ir.Value:  # [N] -> [N, 1], to broadcast against the token positions
            return g.op("Unsqueeze", [x, g.const([1])])

        base = column(g.op("Mul", [g.op("CumSum", [used, g.const(0)], exclusive=1), g.const(per_crop)]))
        width = column(g.op("Add", [g.op("Mul", [cols, g.const(side)]), g.const(1)]))  # sub row + newline
        sub_tokens = g.op("Mul", [g.op("Mul", [column(rows), g.const(side)]), width])  # [N, 1]
        totals = g.op("Add", [sub_tokens, g.const(1 + side * (side + 1))])
        longest = g.op("ReduceMax", [g.op("Reshape", [totals, g.const([-1])])], keepdims=0)
        t = g.op("Unsqueeze", [g.op("Range", [g.const(0), longest, g.const(1)]), g.const([0])])  # [1, Tmax]

        r, c = g.op("Div", [t, width]), g.op("Mod", [t, width])
        crop = g.op("Add", [g.op("Mul", [g.op("Div", [r, g.const(side)]), column(cols)]),
                            g.op("Div", [c, g.const(side)])])
        inside = g.op("Add", [g.op("Mul", [g.op("Mod", [r, g.const(side)]), g.const(side)]),
                              g.op("Mod", [c, g.const(side)])])
        sub_index = g.op("Add", [base, g.op("Add", [g.op("Mul", [g.op("Add", [crop, g.const(1)]),
                                                                 g.const(per_crop)]), inside])])
        sub_index = g.op("Where", [g.op("Equal", [c, g.op("Sub", [width, g.const(1)])]), newline, sub_index])

        u = g.op("Max", [g.op("Sub", [g.op("Sub", [t, sub_tokens]), g.const(1)]), g.const(0)])
        r2, c2 = g.op("Div", [u, g.const(side + 1)]), g.op("Mod", [u, g.const(side + 1)])
        glb_index = g.op("Add", [base, g.op("Add", [g.op("Mul", [r2, g.const(side)]), c2])])
        glb_index = g.op("Where", [g.op("Equal", [c2, g.const(side)]), newline, glb_index])
        separator = g.op("Add", [newline, g.const(1)])
        index = g.op("Where", [g.op("Less", [t, sub_tokens]), sub_index,
                               g.op("Where", [g.op("Equal", [t, sub_tokens]), separator, glb_index])])
        valid = g.op("Less", [t, totals])
        return g.op("Compress", [g.op("Reshape", [index, g.const([-1])]),
                                 g.op("Reshape", [valid, g.const([-1])])], axis=0)


def build_vision(plan: VisionPlan, weights: LazyWeights) -> ir.Model:
    return _VisionGraph(plan, weights).build()
