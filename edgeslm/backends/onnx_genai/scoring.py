"""Score token windows with an ONNX artifact through onnxruntime-genai (quality measurement)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..log_likelihood import nll_from_logits


def window_nll(artifact_dir: Path, windows: list[list[int]]) -> list[float]:
    """Sum of the negative log-likelihoods of tokens 1..n-1 of each window (nats)."""
    import onnxruntime_genai as og

    model = og.Model(str(artifact_dir))
    totals = []
    for window in windows:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(window) + 1)
        generator = og.Generator(model, params)
        generator.append_tokens(window)
        logits = np.asarray(generator.get_output("logits"), dtype=np.float64)[0, :-1]
        del generator
        totals.append(float(nll_from_logits(logits, window[1:])))
    return totals
