"""Negative log-likelihood of target tokens under a matrix of logits (shared by the backends' scorers)."""

from __future__ import annotations

import numpy as np


def nll_from_logits(logits: np.ndarray, targets: list[int]) -> float:
    """Sum over positions of -log softmax(logits[i])[targets[i]], computed stably in float64."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1))
    picked = shifted[np.arange(len(targets)), targets]
    return float((log_z - picked).sum())
