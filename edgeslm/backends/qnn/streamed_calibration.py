"""Calibration of the decoder's parts without keeping calibration feeds in memory.

The old exporter recorded every feed of the whole graph (each one holds the full KV cache of every layer:
3.2 GB per feed at 3.8B, context 4096) before quantizing. Here the activations are computed when the
quantizer asks for them, part by part:

- ``plan_steps`` turns the calibration sequences into the steps the runtime takes (prefill chunks, then
  one-token decode steps), each with a row in a residual store;
- the residual stream entering a part is a float32 memory-mapped file on disk (steps x chunk x hidden);
  the first part's is the embedding lookup;
- ``PartReader`` is the ``CalibrationDataReader`` onnxruntime's quantizer pulls from: for each step it
  builds the feeds from the residual store, the rotary tables and the part's own KV cache, hands them to
  the quantizer, then runs the part's float graph on them to advance its KV cache and write the part's
  output into the next part's store. The quantizer merges min/max after every feed (strided calibration
  with stride 1), so nothing accumulates.
- the prefill pass saves each sequence's KV cache after its prompt (small: the prompt positions only);
  the decode pass starts from it, so each pass holds one float session besides the quantizer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from .kv_cache_loop import position_feeds
from .part_plan import DecoderPart


@dataclass(frozen=True)
class Step:
    row: int  # index in the residual stores
    sequence: int
    kind: str  # prefill | decode
    start: int  # tokens already cached
    ids: tuple[int, ...]  # the real tokens
    width: int  # the graph's token count (chunk, or 1)
    closes_prompt: bool = False  # the last prefill step of its sequence


def plan_steps(sequences: list[list[int]], chunk: int, whole_prompts: dict[int, int] | None = None) -> list[Step]:
    """Each sequence: its first two chunks as prompt, then one decode step per remaining token; when no
    sequence is that long, each is prefilled but for its last token, which is decoded. A sequence in
    ``whole_prompts`` (an image prompt: index -> prompt length) is prefilled up to that length, whatever it
    is, so the calibration sees attention over all of an image's tokens at their real positions."""
    long_enough = any(len(ids) > min(2 * chunk, len(ids)) for ids in sequences)
    steps: list[Step] = []
    for seq, ids in enumerate(sequences):
        prompt = ids[:min(2 * chunk, len(ids))] if long_enough else ids[:-1]
        if whole_prompts and seq in whole_prompts:
            prompt = ids[:whole_prompts[seq]]
        starts = list(range(0, len(prompt), chunk))
        for k, s in enumerate(starts):
            steps.append(Step(len(steps), seq, "prefill", s, tuple(prompt[s:s + chunk]), chunk, k == len(starts) - 1))
        for pos in range(len(prompt), len(ids)):
            steps.append(Step(len(steps), seq, "decode", pos, (ids[pos],), 1))
    return steps


def residual_store(path: Path, steps: list[Step], chunk: int, hidden: int) -> np.ndarray:
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(steps), chunk, hidden))


def embed_steps(store: np.ndarray, steps: list[Step], embeddings: np.ndarray,
                sequence_rows: dict[int, np.ndarray] | None = None) -> None:
    """The first part's input: the embedding rows of each step's (padded) tokens; a sequence in
    ``sequence_rows`` (an image prompt: [tokens, hidden] with the image features in place) takes its rows
    from there."""
    for step in steps:
        padded = np.zeros(step.width, dtype=np.int64)
        padded[:len(step.ids)] = np.maximum(step.ids, 0)
        rows = embeddings[padded].astype(np.float32)
        if sequence_rows and step.sequence in sequence_rows:
            rows[:len(step.ids)] = sequence_rows[step.sequence][step.start:step.start + len(step.ids)]
        store[step.row, :step.width] = rows
    store.flush()


class PartReader(CalibrationDataReader):
    """The feeds of one part's ``kind`` graph, computed on demand (see the module docstring)."""

    def __init__(self, session: Any, part: DecoderPart, steps: list[Step], kind: str, store_in: np.ndarray,
                 store_out: np.ndarray | None, cos: np.ndarray, sin: np.ndarray, context: int, kv_heads: int,
                 head_dim: int, kv_dir: Path):
        self.session, self.part, self.kind = session, part, kind
        self.steps = [s for s in steps if s.kind == kind]
        self.store_in, self.store_out = store_in, store_out
        self.cos, self.sin, self.context = cos, sin, context
        self.kv_dir = kv_dir
        self.names = [o.name for o in session.get_outputs()]
        shape = (1, kv_heads, context, head_dim)
        self.keys = {i: np.zeros(shape, np.float32) for i in part.layers}
        self.values = {i: np.zeros(shape, np.float32) for i in part.layers}
        self.cursor, self.limit, self.pending = 0, len(self.steps), None

    def __len__(self) -> int:
        return len(self.steps)

    def set_range(self, start_index: int, end_index: int) -> None:
        if start_index != self.cursor:
            raise RuntimeError("the streamed calibration reader is sequential")
        self.limit = min(end_index, len(self.steps))

    def get_next(self) -> dict[str, np.ndarray] | None:
        self._finish_pending()
        if self.cursor >= self.limit:
            return None
        step = self.steps[self.cursor]
        self.cursor += 1
        if self.kind == "decode" and (self.cursor == 1 or self.steps[self.cursor - 2].sequence != step.sequence):
            self._load_prompt_cache(step.sequence, step.start)
        feeds = self._feeds(step)
        self.pending = (step, feeds)
        return feeds

    def rewind(self) -> None:
        raise RuntimeError("the streamed calibration reader runs once")

    def finish(self) -> None:
        """Run what the quantizer did not ask for (the last pending step), so the next part's store is full."""
        self._finish_pending()
        while self.cursor < len(self.steps):
            self.limit = len(self.steps)
            self.get_next()
            self._finish_pending()

    def _feeds(self, step: Step) -> dict[str, np.ndarray]:
        feeds = {self.part.input_name: np.ascontiguousarray(self.store_in[step.row, :step.width][None]),
                 **position_feeds(step.start, step.width, self.context, self.cos, self.sin)}
        for i in self.part.layers:
            feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = self.keys[i], self.values[i]
        return feeds

    def _finish_pending(self) -> None:
        if self.pending is None:
            return
        step, feeds = self.pending
        self.pending = None
        outputs = self.session.run(self.names, feeds)
        if self.store_out is not None:
            self.store_out[step.row, :step.width] = outputs[0][0]
        n, end = len(step.ids), step.start + len(step.ids)
        for j, i in enumerate(self.part.layers):
            self.keys[i][:, :, step.start:end] = outputs[1 + 2 * j][:, :, :n]
            self.values[i][:, :, step.start:end] = outputs[2 + 2 * j][:, :, :n]
        if step.closes_prompt:
            np.savez(self.kv_dir / f"seq{step.sequence}.npz",
                     **{f"k{i}": self.keys[i][:, :, :end] for i in self.part.layers},
                     **{f"v{i}": self.values[i][:, :, :end] for i in self.part.layers})

    def _load_prompt_cache(self, sequence: int, length: int) -> None:
        path = self.kv_dir / f"seq{sequence}.npz"
        if not path.is_file():  # a sequence with no prompt step
            return
        with np.load(path) as saved:
            for i in self.part.layers:
                self.keys[i][:, :, :length] = saved[f"k{i}"][:, :, :length]
                self.values[i][:, :, :length] = saved[f"v{i}"][:, :, :length]
