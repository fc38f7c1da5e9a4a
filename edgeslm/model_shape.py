"""The shape of a decoder checkpoint, read once from its ``config.json``: layers, heads, head size.

The build side needs it for KV-cache sizes, rotary tables, group-size checks and static graphs; one
reading of the config keeps the defaults (``head_dim`` = hidden / heads, ``num_key_value_heads`` =
heads) in one place. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int

    @classmethod
    def of(cls, config: dict[str, Any]) -> ModelShape:
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        return cls(layers=int(config["num_hidden_layers"]), hidden_size=hidden, heads=heads,
                   kv_heads=int(config.get("num_key_value_heads") or heads),
                   head_dim=int(config.get("head_dim") or hidden // heads),
                   intermediate_size=int(config.get("intermediate_size") or 0), vocab_size=int(config["vocab_size"]))

    def kv_cache_bytes_per_token(self, bytes_per_value: int) -> int:
        """Keys and values of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value
