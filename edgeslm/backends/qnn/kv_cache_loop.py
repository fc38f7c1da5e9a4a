"""The host side of the static graphs: embeddings, rotary tables, mask and a fixed KV cache (numpy).

Runs a prefill graph (``chunk`` tokens per call; the last chunk padded) and a one-token decode graph
over a cache of ``context`` positions. Each call's new keys/values are written into the cache at the
positions of the real tokens; padded rows are ignored. The same loop drives the float graphs (to
record calibration inputs), the QDQ graphs on the CPU (quality) and the compiled graphs on the NPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ...runtime.generation import ContextLengthError

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
MASK_VALUE = -100.0  # not -inf: keeps the 16-bit activation scale of the attention scores fine


class KvCacheLoop:
    def __init__(self, prefill: Runner, decode: Runner, embeddings: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                 layers: int, kv_heads: int, head_dim: int, context: int, chunk: int,
                 record: dict[str, list] | None = None):
        self.run_prefill, self.run_decode = prefill, decode
        self.embeddings, self.cos, self.sin = embeddings, cos, sin
        self.layers, self.context, self.chunk = layers, context, chunk
        self.keys = [np.zeros((1, kv_heads, context, head_dim), np.float32) for _ in range(layers)]
        self.values = [np.zeros((1, kv_heads, context, head_dim), np.float32) for _ in range(layers)]
        self.record = record  # {"prefill": [...], "decode": [...]}: copies of every feed (calibration)
        self.length = 0

    def reset(self) -> None:
        self.length = 0  # stale cache entries stay masked out

    def _feeds(self, ids: list[int], steps: int) -> dict[str, np.ndarray]:
        padded = np.zeros(steps, dtype=np.int64)
        padded[:len(ids)] = ids
        start = self.length
        positions = np.minimum(np.arange(start, start + steps), self.context - 1)
        mask = np.full((1, 1, steps, self.context + steps), MASK_VALUE, np.float32)
        mask[..., :start] = 0.0
        mask[0, 0, :, self.context:] = np.triu(np.full((steps, steps), MASK_VALUE, np.float32), 1)
        feeds = {"inputs_embeds": self.embeddings[padded][None].astype(np.float32),
                 "cos": self.cos[positions][None], "sin": self.sin[positions][None], "attention_mask": mask}
        for i in range(self.layers):
            feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = self.keys[i], self.values[i]
        return feeds

    def _step(self, ids: list[int], steps: int, run: Runner, kind: str) -> np.ndarray:
        if self.length + len(ids) > self.context:
            raise ContextLengthError(f"{self.length + len(ids)} tokens do not fit the {self.context}-token context "
                                     "the NPU graphs were compiled for",
                                     hint="shorten the prompt or build with a larger qnn-context.context_length")
        feeds = self._feeds(ids, steps)
        if self.record is not None:
            self.record[kind].append({k: v.copy() for k, v in feeds.items()})
        outputs = run(feeds)
        n, end = len(ids), self.length + len(ids)
        for i in range(self.layers):
            self.keys[i][:, :, self.length:end] = outputs[1 + 2 * i][:, :, :n]
            self.values[i][:, :, self.length:end] = outputs[2 + 2 * i][:, :, :n]
        self.length = end
        return outputs[0][0, :n]

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Logits [len(ids), vocab] for every prompt token, in chunks."""
        parts = [self._step(ids[s:s + self.chunk], self.chunk, self.run_prefill, "prefill")
                 for s in range(0, len(ids), self.chunk)]
        return np.concatenate(parts, 0)

    def decode(self, token: int) -> np.ndarray:
        return self._step([token], 1, self.run_decode, "decode")[0]
