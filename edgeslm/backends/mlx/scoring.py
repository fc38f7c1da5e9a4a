"""Score token windows with an MLX artifact (measured quality): one full forward pass per window."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..log_likelihood import nll_per_window
from .vision_scoring import answer_tokens, image_features  # noqa: F401  (the scorer's image side)


def window_logits(artifact_dir: Path, windows: list[list[int]]) -> Iterator[np.ndarray]:
    import mlx.core as mx

    from .model_loading import load_mlx_model

    model = load_mlx_model(artifact_dir)
    for window in windows:
        logits = model(mx.array([window]))[0, :-1].astype(mx.float32)
        yield np.array(logits)


def window_nll(artifact_dir: Path, windows: list[list[int]]) -> list[float]:
    return nll_per_window(window_logits(artifact_dir, windows), windows)
