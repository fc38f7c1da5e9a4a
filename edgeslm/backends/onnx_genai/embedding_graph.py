"""The embedding part of a ``phi3v`` artifact: token ids and image features → ``inputs_embeds``.

onnxruntime-genai runs it before the decoder at every step: ``input_ids`` [batch, seq] int64, where
an image's placeholder tokens are negative (-N for image N, as its phi3v processor and edgeslm's
write them), and ``image_features`` [image tokens, hidden] from the vision part (zero rows after the
prompt). Text ids are looked up in the table (ids clamped at 0, as the checkpoint's
``Phi3ImageEmbedding`` does); the rows at negative ids are then overwritten, in order, with the image
features (``NonZero`` → ``ScatterND``, the ONNX form of its ``index_put``). The table is stored as the
decoder's would be: int4 rows (GatherBlockQuantized), fp16 or fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx_ir as ir

from .graph_tape import FLOAT, MS, GraphTape
from .lazy_weights import LazyWeights

TABLE = "model.embed_tokens.weight"


@dataclass(frozen=True)
class EmbeddingPlan:
    vocab_size: int
    hidden: int
    table: Literal["float32", "float16", "int4"] = "float16"
    block_size: int = 32  # of an int4 table
    io_dtype: Literal["float32", "float16"] = "float32"


def build_embedding(plan: EmbeddingPlan, weights: LazyWeights) -> ir.Model:
    g = GraphTape("/embedding")
    io = FLOAT[plan.io_dtype]
    ids = g.input("input_ids", ir.DataType.INT64, ["batch_size", "sequence_length"])
    features = g.input("image_features", io, ["num_image_tokens", plan.hidden])
    clamped = g.op("Max", [ids, g.const(0)])
    if plan.table == "int4":
        data, scales = weights.quantized_table(TABLE, "model.embed_tokens", plan.block_size)
        text = g.op("GatherBlockQuantized", [g.initializer(data), clamped, g.initializer(scales)],
                    "GatherBlockQuantized", MS, bits=4, block_size=plan.block_size, gather_axis=0, quantize_axis=1)
        table_dtype = weights.float_dtype
    else:
        table_dtype = np.dtype(np.float16 if plan.table == "float16" else np.float32)
        text = g.op("Gather", [g.initializer(weights.table(TABLE, TABLE, table_dtype)), clamped], axis=0)
    if table_dtype != np.dtype(np.float32 if plan.io_dtype == "float32" else np.float16):
        text = g.op("Cast", [text], to=io)
    positions = g.op("Transpose", [g.op("NonZero", [g.op("Less", [ids, g.const(0)])])], perm=[1, 0])
    embeds = g.op("ScatterND", [text, positions, features])
    g.output(embeds, "inputs_embeds", io, ["batch_size", "sequence_length", plan.hidden])
    return g.model("phi3v_embedding")
