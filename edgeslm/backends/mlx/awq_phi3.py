"""Activation-aware quantization (AWQ) for Phi-3 through mlx-lm's AWQ implementation.

mlx-lm ships AWQ layer maps for Llama-style models (separate q/k/v and gate/up projections), not
for Phi-3's fused ``qkv_proj`` and ``gate_up_proj``. The map below scales each fused projection
against the RMSNorm in front of it (the two places where the scale can be folded exactly); the
``o_proj`` and ``down_proj`` inputs are left to plain round-to-nearest, as mlx-lm's AWQ does for
layers without a map entry. ``qkv_proj`` is not clipped (query/key clipping hurts attention).
"""

from __future__ import annotations

from typing import Any


def phi3_awq_config() -> Any:
    from mlx_lm.quant.awq import AWQConfig, ScaleConfig

    return AWQConfig(
        embed="embed_tokens",
        lm_head="lm_head",
        no_clip=["qkv_proj"],
        scale_configs=[
            ScaleConfig(block="self_attn", prev="input_layernorm", layers=["qkv_proj"], kwargs=["mask"]),
            ScaleConfig(block="mlp", prev="post_attention_layernorm", layers=["gate_up_proj"]),
        ],
    )


def awq_quantize_phi3(model: Any, windows: list[list[int]], bits: int, group_size: int, grid: int) -> None:
    """Quantize ``model`` in place with AWQ; embeddings and lm_head get the same bits and group size."""
    import mlx.core as mx
    from mlx_lm.quant.awq import awq_quantize

    awq_quantize(model, mx.array(windows), phi3_awq_config(), group_size=group_size, bits=bits,
                 embed_group_size=group_size, embed_bits=bits, n_grid=grid)
