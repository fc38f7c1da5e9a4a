"""The source checkpoint's fp32 logits, computed one decoder layer at a time from the mmap'd safetensors.

Why: measured quality compares every artifact with the source model on a few token windows. Loading
the whole model in fp32 with transformers needs 4 bytes per parameter -- about 15 GB for the 3.8B
Phi-3.5-mini -- and would be the memory peak of the whole build. Here the weights stay in the
memory-mapped checkpoint (bf16 on disk); only one decoder layer at a time is cast to fp32 and run on
all windows at once (right-padded to the longest: attention is causal, so padding at the end never
reaches the real positions), then freed before the next. Peak memory is one layer in fp32 (~0.45 GB
at full size) plus the activations and, at the end, the fp32 lm_head.

The maths follows transformers' ``Phi3ForCausalLM`` (fp32 RMSNorm, fused qkv and gate_up projections,
grouped-query attention, rotate-half RoPE with Phi-3's LongRoPE: short factors for a window within
``original_max_position_embeddings``, long factors beyond, cos/sin scaled by the attention factor).
Anything else is refused with a ValueError rather than computed wrongly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open

from ..model_shape import ModelShape

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
FINAL_NORM = "model.norm.weight"
LAYER_TENSORS = ("input_layernorm.weight", "self_attn.qkv_proj.weight", "self_attn.o_proj.weight",
                 "post_attention_layernorm.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight")


def reference_logits(model_dir: Path, config: dict, windows: list[list[int]]) -> Iterator[np.ndarray]:
    """Yield, per window, the source model's fp32 logits [len(window), vocab] (numpy float32).

    The configuration is checked (and the weight files located) before this returns; the layers run
    on the first ``next()``.
    """
    _check_architecture(config)
    if not windows or not all(windows):
        raise ValueError("reference_logits needs at least one window and no empty window")
    return _generate(_Checkpoint(Path(model_dir)), config, [list(w) for w in windows])


def _check_architecture(config: dict[str, Any]) -> None:
    archs = config.get("architectures") or []
    # a Phi-3.5-vision checkpoint's text decoder is a Phi-3 one with the same tensor names
    if not (archs in (["Phi3ForCausalLM"], ["Phi3VForCausalLM"]) if archs else config.get("model_type") == "phi3"):
        raise ValueError(f"the fp32 reference supports Phi3ForCausalLM (and Phi-3.5-vision's text decoder) only, "
                         f"not {archs or config.get('model_type')}")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {config['hidden_act']!r} (Phi-3 uses silu)")
    rotary = {float(config.get("partial_rotary_factor", 1.0)), float(_rope_params(config).get("partial_rotary_factor", 1.0))}
    if rotary != {1.0}:
        raise ValueError("partial_rotary_factor != 1.0 is not supported (Phi-3.5-mini rotates the whole head)")
    if _rope_kind(config) not in ("default", "longrope", "su"):
        raise ValueError(f"unsupported RoPE scaling {_rope_kind(config)!r} (expected none or longrope)")


class _Checkpoint:
    """Tensor name -> safetensors file, read lazily: each read opens the (memory-mapped) file anew, so
    nothing of it stays mapped once the returned tensors are dropped."""

    def __init__(self, model_dir: Path):
        index, single = model_dir / INDEX_FILE, model_dir / SINGLE_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            self.files = {name: model_dir / fname for name, fname in weight_map.items()}
        elif single.is_file():
            with safe_open(single, framework="pt") as f:
                self.files = dict.fromkeys(f.keys(), single)  # noqa: SIM118 - safe_open is not iterable
        else:
            raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {model_dir}")

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Fresh float32 copies of these tensors (no reference into the mapping survives)."""
        missing = [n for n in names if n not in self.files]
        if missing:
            raise ValueError(f"the checkpoint lacks {missing[:3]}: not a Phi3ForCausalLM layout")
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        out = {}
        for path, group in by_file.items():
            with safe_open(path, framework="pt") as f:
                for name in group:
                    out[name] = f.get_tensor(name).to(torch.float32, copy=True)
        return out

    def rows(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """``weight[ids]`` in float32, touching only those rows of the mapped matrix."""
        with safe_open(self.files[name], framework="pt") as f:
            return f.get_tensor(name)[ids].to(torch.float32)


def _generate(ckpt: _Checkpoint, config: dict[str, Any], windows: list[list[int]]) -> Iterator[np.ndarray]:
    with torch.inference_mode():
        hidden = _decoder_stack(ckpt, config, windows)
        head = LM_HEAD if LM_HEAD in ckpt.files and not config.get("tie_word_embeddings") else EMBED
        final = ckpt.load([FINAL_NORM, head])
    eps = float(config["rms_norm_eps"])
    for b, window in enumerate(windows):
        with torch.inference_mode():  # not held across the yield: the caller's torch state stays its own
            x = _rms_norm(hidden[b, :len(window)], final[FINAL_NORM], eps)
            logits = F.linear(x, final[head]).numpy()
        yield logits


def _decoder_stack(ckpt: _Checkpoint, config: dict[str, Any], windows: list[list[int]]) -> torch.Tensor:
    """Hidden states [batch, longest, hidden] after the last decoder layer (before the final norm)."""
    lengths = [len(w) for w in windows]
    longest = max(lengths)
    ids = torch.tensor([w + [0] * (longest - len(w)) for w in windows], dtype=torch.int64)
    hidden = ckpt.rows(EMBED, ids)  # [batch, longest, hidden]
    tables = {n: _rope(config, n, longest) for n in set(lengths)}  # factors chosen by each window's length
    cos = torch.stack([tables[n][0] for n in lengths])[:, None]  # [batch, 1, longest, head_dim]
    sin = torch.stack([tables[n][1] for n in lengths])[:, None]
    mask = _sliding_window_mask(config.get("sliding_window"), longest)
    for i in range(int(config["num_hidden_layers"])):
        prefix = f"model.layers.{i}."
        weights = ckpt.load([prefix + n for n in LAYER_TENSORS])
        layer = {n: weights[prefix + n] for n in LAYER_TENSORS}
        del weights
        hidden = _decoder_layer(hidden, layer, config, cos, sin, mask)
        del layer
    return hidden


def _decoder_layer(h: torch.Tensor, w: dict[str, torch.Tensor], config: dict[str, Any], cos: torch.Tensor,
                   sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    eps = float(config["rms_norm_eps"])
    h = h + _attention(_rms_norm(h, w["input_layernorm.weight"], eps), w["self_attn.qkv_proj.weight"],
                       w["self_attn.o_proj.weight"], config, cos, sin, mask)
    gate, up = F.linear(_rms_norm(h, w["post_attention_layernorm.weight"], eps), w["mlp.gate_up_proj.weight"]).chunk(2, -1)
    return h + F.linear(up * F.silu(gate), w["mlp.down_proj.weight"])


def _attention(x: torch.Tensor, qkv_w: torch.Tensor, o_w: torch.Tensor, config: dict[str, Any], cos: torch.Tensor,
               sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    batch, length, _ = x.shape
    heads, head_dim = int(config["num_attention_heads"]), ModelShape.of(config).head_dim
    kv_heads = int(config.get("num_key_value_heads") or heads)
    q, k, v = F.linear(x, qkv_w).split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = q.view(batch, length, heads, head_dim).transpose(1, 2)
    k = k.view(batch, length, kv_heads, head_dim).transpose(1, 2)
    v = v.view(batch, length, kv_heads, head_dim).transpose(1, 2)
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    if kv_heads != heads:  # grouped-query attention: each kv head serves heads // kv_heads query heads
        k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=head_dim ** -0.5)
    return F.linear(out.transpose(1, 2).reshape(batch, length, heads * head_dim), o_w)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _sliding_window_mask(window: int | None, length: int) -> torch.Tensor | None:
    """None (plain causal) unless the sliding window is shorter than the sequence: then a boolean mask."""
    if not window or window >= length:
        return None
    q, kv = torch.arange(length)[:, None], torch.arange(length)[None, :]
    return (kv <= q) & (kv > q - int(window))


def _rope_params(config: dict[str, Any]) -> dict[str, Any]:
    # transformers < 5 writes "rope_scaling"; transformers 5 writes "rope_parameters" (with rope_theta inside)
    return config.get("rope_scaling") or config.get("rope_parameters") or {}


def _rope_kind(config: dict[str, Any]) -> str:
    params = _rope_params(config)
    return params.get("rope_type") or params.get("type") or "default"


def _rope(config: dict[str, Any], seq_len: int, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [positions, head_dim] float32, for a sequence of ``seq_len`` tokens.

    As transformers' ``_compute_longrope_parameters`` (Phi-3): inv_freq = 1 / (ext * base ** (2i/dim)),
    ext = long_factor if seq_len > original_max_position_embeddings else short_factor; cos and sin
    times attention_factor = sqrt(1 + ln(factor) / ln(original)), factor = max / original positions
    (1.0 when factor <= 1; rope_scaling's own "factor" / "attention_factor" win when given).
    """
    params, dim = _rope_params(config), ModelShape.of(config).head_dim
    base = float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    ext, attention_factor = torch.ones_like(exponents), 1.0
    if _rope_kind(config) in ("longrope", "su"):
        original = int(config.get("original_max_position_embeddings")
                       or params.get("original_max_position_embeddings") or 4096)  # Phi3Config's default
        ext = torch.tensor(params["long_factor"] if seq_len > original else params["short_factor"], dtype=torch.float32)
        factor = params.get("factor") or float(config["max_position_embeddings"]) / original
        attention_factor = params.get("attention_factor")
        if attention_factor is None:
            attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    inv_freq = 1.0 / (ext * base ** exponents)
    freqs = torch.arange(positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * float(attention_factor), emb.sin() * float(attention_factor)
