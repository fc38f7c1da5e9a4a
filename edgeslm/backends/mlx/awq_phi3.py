"""Activation-aware quantization (AWQ) for Phi-3 through mlx-lm's AWQ implementation.

mlx-lm ships AWQ layer maps for Llama-style models (separate q/k/v and gate/up projections), not
for Phi-3's fused ``qkv_proj`` and ``gate_up_proj``. The map below scales each fused projection
against the RMSNorm in front of it (the two places where the scale can be folded exactly); the
``o_proj`` and ``down_proj`` inputs are left to plain round-to-nearest, as mlx-lm's AWQ does for
layers without a map entry. ``qkv_proj`` is not clipped (query/key clipping hurts attention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import UsageError


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


def calibration_windows(tokenizer_json: Path, text_path: Path, samples: int, length: int) -> list[list[int]]:
    """Up to ``samples`` consecutive windows of ``length`` tokens from the calibration text."""
    from tokenizers import Tokenizer

    try:
        text = text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the calibration text {text_path}: {exc}") from None
    ids = Tokenizer.from_file(str(tokenizer_json)).encode(text, add_special_tokens=False).ids
    windows = [ids[i:i + length] for i in range(0, len(ids) - length + 1, length)][:samples]
    if not windows:
        raise UsageError(f"the calibration text {text_path} has {len(ids)} tokens, fewer than one window of "
                         f"{length}", hint="give a longer text or lower awq_sequence_length")
    return windows


def awq_quantize_phi3(model: Any, windows: list[list[int]], bits: int, group_size: int, grid: int) -> None:
    """Quantize ``model`` in place with AWQ; embeddings and lm_head get the same bits and group size."""
    import mlx.core as mx
    from mlx_lm.quant.awq import awq_quantize

    awq_quantize(model, mx.array(windows), phi3_awq_config(), group_size=group_size, bits=bits,
                 embed_group_size=group_size, embed_bits=bits, n_grid=grid)
