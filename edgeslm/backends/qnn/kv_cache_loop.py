"""The host side of the static graphs: embeddings, rotary tables, mask and a fixed KV cache (numpy).

Runs the decoder's parts in sequence (``part_plan.py``), each a prefill graph (``chunk`` tokens per call;
the last chunk padded) and a one-token decode graph over a cache of ``context`` positions: the embedding
lookup feeds the first part, each part's hidden states the next, the last part gives the logits. Each
call's new keys/values are written into the cache (host buffers, per layer) at the positions of the real
tokens; padded rows are ignored. The same loop drives the QDQ graphs on the CPU (quality) and the compiled
graphs on the NPU; ``position_feeds`` is also what the build's streamed calibration feeds the float graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...runtime.generation import ContextLengthError

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
MASK_VALUE = -100.0  # not -inf: keeps the 16-bit activation scale of the attention scores fine


@dataclass(frozen=True)
class PartRunners:
    layers: range
    input_name: str  # inputs_embeds (first part) or hidden_states
    prefill: Runner
    decode: Runner


def position_feeds(start: int, steps: int, context: int, cos: np.ndarray, sin: np.ndarray) -> dict[str, np.ndarray]:
    """cos/sin and the additive mask for ``steps`` new tokens after ``start`` cached ones."""
    positions = np.minimum(np.arange(start, start + steps), context - 1)
    mask = np.full((1, 1, steps, context + steps), MASK_VALUE, np.float32)
    mask[..., :start] = 0.0
    mask[0, 0, :, context:] = np.triu(np.full((steps, steps), MASK_VALUE, np.float32), 1)
    return {"cos": cos[positions][None], "sin": sin[positions][None], "attention_mask": mask}


class KvCacheLoop:
    def __init__(self, parts: list[PartRunners], embeddings: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                 kv_heads: int, head_dim: int, context: int, chunk: int):
        self.parts = parts
        self.embeddings, self.cos, self.sin = embeddings, cos, sin
        self.context, self.chunk = context, chunk
        layers = [i for part in parts for i in part.layers]
        self.keys = {i: np.zeros((1, kv_heads, context, head_dim), np.float32) for i in layers}
        self.values = {i: np.zeros((1, kv_heads, context, head_dim), np.float32) for i in layers}
        self.length = 0

    def reset(self) -> None:
        self.length = 0  # stale cache entries stay masked out

    def _step(self, ids: list[int], steps: int, kind: str, rows: np.ndarray | None = None) -> np.ndarray:
        if self.length + len(ids) > self.context:
            raise ContextLengthError(f"{self.length + len(ids)} tokens do not fit the {self.context}-token context "
                                     "the NPU graphs were compiled for",
                                     hint="shorten the prompt or build with a larger qnn-context.context_length")
        padded = np.zeros(steps, dtype=np.int64)
        padded[:len(ids)] = np.maximum(ids, 0)
        hidden = self.embeddings[padded][None].astype(np.float32)
        if rows is not None:  # given embeddings (image features at the image positions)
            hidden[0, :len(ids)] = rows
        common = position_feeds(self.length, steps, self.context, self.cos, self.sin)
        n, end = len(ids), self.length + len(ids)
        for part in self.parts:
            feeds = {part.input_name: hidden, **common}
            for i in part.layers:
                feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = self.keys[i], self.values[i]
            outputs = (part.prefill if kind == "prefill" else part.decode)(feeds)
            hidden = outputs[0]
            for j, i in enumerate(part.layers):
                self.keys[i][:, :, self.length:end] = outputs[1 + 2 * j][:, :, :n]
                self.values[i][:, :, self.length:end] = outputs[2 + 2 * j][:, :, :n]
        self.length = end
        return hidden[0, :n]

    def prefill(self, ids: list[int], rows: np.ndarray | None = None) -> np.ndarray:
        """Logits [len(ids), vocab] for every prompt token, in chunks; ``rows`` [len(ids), hidden]: the
        prompt's embeddings when they are not only the token table's (an image prompt)."""
        return np.concatenate([self._step(ids[s:s + self.chunk], self.chunk, "prefill",
                                          None if rows is None else rows[s:s + self.chunk])
                               for s in range(0, len(ids), self.chunk)], 0)

    def snapshot(self) -> tuple[int, dict, dict]:
        """The cache's filled part (to continue several prompts from one shared prefix)."""
        n = self.length
        return n, {i: k[:, :, :n].copy() for i, k in self.keys.items()}, \
            {i: v[:, :, :n].copy() for i, v in self.values.items()}

    def restore(self, saved: tuple[int, dict, dict]) -> None:
        n, keys, values = saved
        for i in self.keys:
            self.keys[i][:, :, :n], self.values[i][:, :, :n] = keys[i], values[i]
        self.length = n

    def decode(self, token: int) -> np.ndarray:
        return self._step([token], 1, "decode")[0]
