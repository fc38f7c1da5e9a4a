"""Score token windows with a QNN artifact (measured quality).

The QDQ graphs run on ONNX Runtime's CPU provider: it computes the same quantized graph as the HTP
(measured on the docs model: window perplexity 7.654 on the HTP simulator against 7.662 on the CPU
provider, same graph) about 30x faster than the simulator. Without shipped QDQ graphs, the first SoC's
compiled graphs run on the HTP backend (the simulator on x86_64).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..log_likelihood import nll_per_window
from . import ep_sessions
from .artifact_files import QnnArtifact


def window_logits(artifact_dir: Path, windows: list[list[int]], on_htp: bool = False,
                  soc: str | None = None) -> Iterator[np.ndarray]:
    artifact = QnnArtifact.open(artifact_dir)
    if artifact.config.get("qdq") and not on_htp:
        loop = artifact.loop(lambda p: ep_sessions.runner(ep_sessions.cpu_session(p, 2)), "qdq")
    else:
        soc = soc or next(iter(artifact.config["socs"]))
        entry = artifact.config["socs"][soc]
        loop = artifact.loop(lambda p: ep_sessions.runner(ep_sessions.htp_session(
            p, entry["soc_model"], entry["htp_arch"], threads=2)), soc)
    for window in windows:
        loop.reset()
        yield loop.prefill(window)[:-1]


def window_nll(artifact_dir: Path, windows: list[list[int]], on_htp: bool = False, soc: str | None = None) -> list[float]:
    return nll_per_window(window_logits(artifact_dir, windows, on_htp, soc), windows)
