"""Score token windows with a GGUF artifact through llama.cpp (measured quality): one evaluation per window
with every position's logits kept (``logits_all``), on a context as long as the longest window."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..log_likelihood import nll_per_window
from .engine import GGUF_NAME, import_llama_cpp, open_llama


def window_logits(artifact_dir: Path, windows: list[list[int]], threads: int | None = None) -> Iterator[np.ndarray]:
    """Per window, the logits of positions 0..n-2 (float32)."""
    if not windows:
        return
    llama_cpp = import_llama_cpp()
    from ...runtime.host_probe import probe_host

    n_ctx = max(len(w) for w in windows)
    llm = open_llama(llama_cpp, Path(artifact_dir) / GGUF_NAME, n_ctx, threads or probe_host().physical_cores,
                     n_batch=512, logits_all=True)
    try:
        for window in windows:
            llm.reset()
            llm.eval(window)
            yield np.array(llm.scores[:len(window) - 1], dtype=np.float32)
    finally:
        llm.close()


def scored_on(artifact_dir: Path) -> str:
    return "cpu"


def window_nll(artifact_dir: Path, windows: list[list[int]]) -> list[float]:
    """Sum of the negative log-likelihoods of tokens 1..n-1 of each window (nats)."""
    return nll_per_window(window_logits(artifact_dir, windows), windows)
