"""What a Phi-3 GGUF holds, as llama.cpp's converter (``Phi3MiniModel``) writes it: the metadata and the tensors.

Tensor names follow gguf-py's PHI3 map: the fused ``attn_qkv`` and ``ffn_up`` (gate and up, llama.cpp
splits them), norms in F32, LongRoPE's factors as the ``rope_factors_long`` / ``rope_factors_short``
tensors with the attention factor ``sqrt(1 + ln(max/original) / ln(original))``. The types: every 2-D
weight in the artifact's quant type, the output projection in ``output_type``, 1-D tensors F32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ...errors import BuildError
from ...model_shape import ModelShape

ARCH = "phi3"
# llama_ftype of each whole-file type (llama.h: LLAMA_FTYPE_MOSTLY_*)
FILE_TYPES = {"F16": 1, "Q4_0": 2, "Q8_0": 7, "Q4_K_M": 15}


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # the GGUF name
    source: str  # the checkpoint tensor ('' for one computed from the config)
    shape: tuple[int, ...]  # numpy order (rows, columns)
    type_name: str  # F32 | F16 | Q4_0 | Q8_0


def tensor_plan(config: dict[str, Any], weight_type: str, output_type: str, has_lm_head: bool) -> list[PlannedTensor]:
    shape = ModelShape.of(config)
    hidden, inter = shape.hidden_size, shape.intermediate_size
    qkv = (shape.heads + 2 * shape.kv_heads) * shape.head_dim
    plan = [PlannedTensor("token_embd.weight", "model.embed_tokens.weight", (shape.vocab_size, hidden), weight_type)]
    for i in range(shape.layers):
        src, dst = f"model.layers.{i}", f"blk.{i}"
        plan += [
            PlannedTensor(f"{dst}.attn_norm.weight", f"{src}.input_layernorm.weight", (hidden,), "F32"),
            PlannedTensor(f"{dst}.attn_qkv.weight", f"{src}.self_attn.qkv_proj.weight", (qkv, hidden), weight_type),
            PlannedTensor(f"{dst}.attn_output.weight", f"{src}.self_attn.o_proj.weight",
                          (hidden, shape.heads * shape.head_dim), weight_type),
            PlannedTensor(f"{dst}.ffn_norm.weight", f"{src}.post_attention_layernorm.weight", (hidden,), "F32"),
            PlannedTensor(f"{dst}.ffn_up.weight", f"{src}.mlp.gate_up_proj.weight", (2 * inter, hidden), weight_type),
            PlannedTensor(f"{dst}.ffn_down.weight", f"{src}.mlp.down_proj.weight", (hidden, inter), weight_type),
        ]
    plan.append(PlannedTensor("output_norm.weight", "model.norm.weight", (hidden,), "F32"))
    if has_lm_head:  # tied embeddings: llama.cpp reads token_embd for the output
        plan.append(PlannedTensor("output.weight", "lm_head.weight", (shape.vocab_size, hidden), output_type))
    factors = longrope_factors(config)
    if factors:
        half = len(factors[0])
        plan += [PlannedTensor("rope_factors_long.weight", "", (half,), "F32"),
                 PlannedTensor("rope_factors_short.weight", "", (half,), "F32")]
    return plan


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    return dict(config.get("rope_scaling") or config.get("rope_parameters") or {})


def original_context(config: dict[str, Any]) -> int:
    return int(config.get("original_max_position_embeddings") or _rope(config).get("original_max_position_embeddings")
               or config.get("max_position_embeddings", 4096))


def rope_dims(config: dict[str, Any]) -> int:
    shape = ModelShape.of(config)
    return int(float(config.get("partial_rotary_factor", 1.0)) * shape.hidden_size) // shape.heads


def longrope_factors(config: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """(long, short) LongRoPE factors, or None for a checkpoint without them."""
    rope = _rope(config)
    long, short = rope.get("long_factor"), rope.get("short_factor")
    if not long:
        return None
    kind = str(rope.get("type", rope.get("rope_type", ""))).lower()
    if kind not in ("su", "longrope"):
        raise BuildError(f"rope_scaling type '{kind}' is not one the GGUF writer handles (longrope/su)")
    if not short or len(long) != len(short) or len(long) * 2 != rope_dims(config):
        raise BuildError(f"LongRoPE factors must both have {rope_dims(config) // 2} values; the config has "
                         f"{len(long)} long and {len(short or [])} short", hint="the config.json is damaged")
    return [float(x) for x in long], [float(x) for x in short]


def write_metadata(writer: Any, config: dict[str, Any], name: str, quant_type: str) -> None:
    """The converter's Phi-3 hyperparameters on a gguf.GGUFWriter (tokenizer metadata: see tokenizer_metadata)."""
    shape = ModelShape.of(config)
    max_pos, orig = int(config["max_position_embeddings"]), original_context(config)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(max_pos)
    writer.add_rope_scaling_orig_ctx_len(orig)
    writer.add_embedding_length(shape.hidden_size)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(shape.layers)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_dimension_count(rope_dims(config))
    writer.add_rope_freq_base(float(config.get("rope_theta", _rope(config).get("rope_theta", 10000.0))))
    writer.add_file_type(FILE_TYPES[quant_type])
    writer.add_sliding_window(int(config.get("sliding_window") or 0))
    if longrope_factors(config):
        scale = max_pos / orig
        writer.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0)
    writer.add_quantization_version(2)  # GGML_QNT_VERSION


def tokenizer_metadata(writer: Any, folder, vocab_size: int) -> None:
    """tokenizer.ggml.* and the chat template, as the converter writes them for an SPM Phi-3 tokenizer."""
    import gguf

    from .spm_vocab import phi3_vocab

    vocab = phi3_vocab(folder, vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    gguf.SpecialVocab(folder, n_vocab=len(vocab.tokens)).add_to_gguf(writer)
