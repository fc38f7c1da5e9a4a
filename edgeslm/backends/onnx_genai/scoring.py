"""Score token windows with an ONNX artifact through onnxruntime-genai (quality measurement)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..log_likelihood import nll_per_window


def window_logits(artifact_dir: Path, windows: list[list[int]]) -> Iterator[np.ndarray]:
    """Per window, the logits of positions 0..n-2 (float32)."""
    import onnxruntime_genai as og

    model = og.Model(str(artifact_dir))
    for window in windows:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(window) + 1)
        generator = og.Generator(model, params)
        generator.append_tokens(window)
        logits = np.array(generator.get_output("logits"), dtype=np.float32)[0, :-1]
        del generator
        yield logits


def window_nll(artifact_dir: Path, windows: list[list[int]]) -> list[float]:
    """Sum of the negative log-likelihoods of tokens 1..n-1 of each window (nats)."""
    return nll_per_window(window_logits(artifact_dir, windows), windows)
