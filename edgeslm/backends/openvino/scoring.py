"""Score token windows with the OpenVINO IR (stateful decoder) on the CPU, for measured quality."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..log_likelihood import nll_per_window
from .vision_scoring import ANSWERS_FROM_TEXT, answer_tokens, image_features  # noqa: F401  (the image side)


def window_logits(artifact_dir: Path, windows: list[list[int]]) -> Iterator[np.ndarray]:
    import openvino as ov

    if (artifact_dir / "openvino_language_model.xml").is_file():  # Phi-3.5-vision: the decoder on embeddings
        from .vision_scoring import window_logits as on_embeds

        yield from on_embeds(artifact_dir, windows)
        return

    compiled = ov.Core().compile_model(str(artifact_dir / "openvino_model.xml"), "CPU")
    names = {port.get_any_name() for port in compiled.inputs}
    for window in windows:
        request = compiled.create_infer_request()
        request.reset_state()
        n = len(window)
        feeds = {"input_ids": np.array([window], dtype=np.int64),
                 "attention_mask": np.ones((1, n), dtype=np.int64)}
        if "position_ids" in names:
            feeds["position_ids"] = np.arange(n, dtype=np.int64)[None, :]
        if "beam_idx" in names:
            feeds["beam_idx"] = np.zeros((1,), dtype=np.int32)
        request.infer(feeds)
        yield np.array(request.get_tensor("logits").data, dtype=np.float32)[0, :-1]


def window_nll(artifact_dir: Path, windows: list[list[int]]) -> list[float]:
    return nll_per_window(window_logits(artifact_dir, windows), windows)
