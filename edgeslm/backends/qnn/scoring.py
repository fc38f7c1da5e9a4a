"""Score token windows with a QNN artifact (measured quality), one decoder part at a time.

The QDQ graphs run on ONNX Runtime's CPU provider: it computes the same quantized graph as the HTP
(measured on the docs model: window perplexity 7.654 on the HTP simulator against 7.662 on the CPU
provider, same graph) about 30x faster than the simulator. Without shipped QDQ graphs, the first SoC's
compiled graphs run on the HTP backend (the simulator on x86_64).

The windows go through the parts in turn: one part's prefill session is open at a time (the CPU
provider keeps a QDQ part's weights as float32 once loaded: all 32 parts of the full model at once would
be ~29 GB), each window's hidden states are kept between parts (a chunk x hidden array per chunk), and the
last part's logits are what is scored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..log_likelihood import nll_per_window
from . import ep_sessions
from .artifact_files import QnnArtifact
from .kv_cache_loop import position_feeds
from .vision_scoring import answer_tokens, image_features  # noqa: F401  (the scorer's image side)


def window_logits(artifact_dir: Path, windows: list[list[int]], on_htp: bool = False,
                  soc: str | None = None) -> Iterator[np.ndarray]:
    artifact = QnnArtifact.open(artifact_dir)
    c = artifact.config
    if c.get("qdq") and not on_htp:
        where = "qdq"

        def make(path: Path):
            return ep_sessions.runner(ep_sessions.cpu_session(path, 2))
    else:
        where = soc or next(iter(c["socs"]))
        entry = c["socs"][where]

        def make(path: Path):
            return ep_sessions.runner(ep_sessions.htp_session(path, entry["soc_model"], entry["htp_arch"], threads=2))
    chunk, context = c["graphs"]["prefill_tokens"], c["context_length"]
    states = [[artifact.embeddings[_padded(ids[s:s + chunk], chunk)][None].astype(np.float32)
               for s in range(0, len(ids), chunk)] for ids in windows]
    for files in artifact.part_files(where):
        run = make(artifact.folder / files["prefill"])
        layers = range(*files["layers"])
        name = "inputs_embeds" if layers.start == 0 else "hidden_states"
        shape = (1, c["kv_heads"], context, c["head_dim"])
        keys = {i: np.zeros(shape, np.float32) for i in layers}
        values = {i: np.zeros(shape, np.float32) for i in layers}
        for ids, chunks in zip(windows, states):
            length = 0
            for k, hidden in enumerate(chunks):
                n = min(chunk, len(ids) - k * chunk)
                feeds = {name: hidden, **position_feeds(length, chunk, context, artifact.cos, artifact.sin)}
                for i in layers:
                    feeds[f"past_key_{i}"], feeds[f"past_value_{i}"] = keys[i], values[i]
                outputs = run(feeds)
                chunks[k] = outputs[0]
                for j, i in enumerate(layers):
                    keys[i][:, :, length:length + n] = outputs[1 + 2 * j][:, :, :n]
                    values[i][:, :, length:length + n] = outputs[2 + 2 * j][:, :, :n]
                length += n
        del run
    for ids, chunks in zip(windows, states):
        logits = np.concatenate([out[0, :min(chunk, len(ids) - k * chunk)] for k, out in enumerate(chunks)], 0)
        yield logits[:-1]


def window_nll(artifact_dir: Path, windows: list[list[int]], on_htp: bool = False, soc: str | None = None) -> list[float]:
    return nll_per_window(window_logits(artifact_dir, windows, on_htp, soc), windows)


def _padded(ids: list[int], width: int) -> np.ndarray:
    padded = np.zeros(width, dtype=np.int64)
    padded[:len(ids)] = ids
    return padded
