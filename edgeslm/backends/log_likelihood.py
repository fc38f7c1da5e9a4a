"""Negative log-likelihood of target tokens under a matrix of logits (shared by the backends' scorers)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def nll_from_logits(logits: np.ndarray, targets: list[int]) -> float:
    """Sum over positions of -log softmax(logits[i])[targets[i]], computed stably in float64."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1))
    picked = shifted[np.arange(len(targets)), targets]
    return float((log_z - picked).sum())


def nll_per_window(window_logits: Iterable[np.ndarray], windows: list[list[int]]) -> list[float]:
    """Summed NLL of tokens 1..n-1 of each window, from per-window logits of positions 0..n-2."""
    return [nll_from_logits(logits, window[1:]) for window, logits in zip(windows, window_logits)]
