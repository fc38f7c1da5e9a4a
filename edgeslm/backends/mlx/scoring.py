"""Score token windows with an MLX artifact (measured quality): one full forward pass per window."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..log_likelihood import nll_from_logits


def window_nll(artifact_dir: Path, windows: list[list[int]]) -> list[float]:
    import mlx.core as mx

    from .model_loading import load_mlx_model

    model = load_mlx_model(artifact_dir)
    totals = []
    for window in windows:
        logits = model(mx.array([window]))[0, :-1].astype(mx.float32)
        totals.append(nll_from_logits(np.array(logits), window[1:]))
    return totals
