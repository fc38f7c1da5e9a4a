"""Score token windows with an ONNX artifact through onnxruntime-genai (quality measurement).

A CUDA artifact built on a workstation without a GPU (or without onnxruntime-genai-cuda) is scored
with the same graph on the CPU provider: the weights and graph are the artifact's, only the kernels
differ. ``scored_on`` says which provider ran, for the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..log_likelihood import nll_per_window
from .vision_scoring import answer_tokens, image_features  # noqa: F401  (the scorer's image side)


def window_logits(artifact_dir: Path, windows: list[list[int]]) -> Iterator[np.ndarray]:
    """Per window, the logits of positions 0..n-2 (float32)."""
    import onnxruntime_genai as og

    model = _open(artifact_dir)
    for window in windows:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(window) + 1)
        generator = og.Generator(model, params)
        generator.append_tokens(window)
        logits = np.array(generator.get_output("logits"), dtype=np.float32)[0, :-1]
        del generator
        yield logits


_SCORED_ON: dict[Path, str] = {}


def _open(artifact_dir: Path):
    """The artifact's model on its own provider, or on the CPU when this host cannot run that one."""
    import onnxruntime_genai as og

    options = json.loads((artifact_dir / "genai_config.json").read_text())["model"]["decoder"].get(
        "session_options", {}).get("provider_options", [])
    providers = [name for entry in options for name in entry]
    if providers:
        try:
            model = og.Model(str(artifact_dir))
            _SCORED_ON[artifact_dir] = providers[0]
            return model
        except RuntimeError:  # e.g. "Cuda interface not available" on a build host without a GPU
            pass
    config = og.Config(str(artifact_dir))
    config.clear_providers()
    _SCORED_ON[artifact_dir] = "cpu"
    return og.Model(config)


def scored_on(artifact_dir: Path) -> str:
    """The provider that scored the artifact's windows (after ``window_logits``)."""
    return _SCORED_ON.get(artifact_dir, "")


def window_nll(artifact_dir: Path, windows: list[list[int]]) -> list[float]:
    """Sum of the negative log-likelihoods of tokens 1..n-1 of each window (nats)."""
    return nll_per_window(window_logits(artifact_dir, windows), windows)
