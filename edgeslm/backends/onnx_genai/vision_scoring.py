"""Score the image side of a ``phi3v`` ONNX artifact (build-time quality measurement).

``image_features`` runs the artifact's vision part alone (onnxruntime, CPU), to compare its features
with the torch reference's; ``answer_tokens`` answers image questions greedily through
onnxruntime-genai with the same token ids and pixel values the reference was given, so the accuracy
difference is the artifact's, not a tokenizer's or a preprocessor's.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .phi3v_export import VISION_FILE


def image_features(artifact_dir: Path, pixel_values: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact_dir / VISION_FILE), providers=["CPUExecutionProvider"])
    (features,) = session.run(["image_features"], {"pixel_values": pixel_values.astype(np.float32),
                                                   "image_sizes": image_sizes.astype(np.int64)})
    return np.asarray(features, dtype=np.float32)


def answer_tokens(artifact_dir: Path, prompts: Iterable[tuple[list[int], object]], max_new_tokens: int,
                  stop_ids: Iterable[int]) -> list[list[int]]:
    """Greedy answers (stop token excluded) to (prompt ids, ProcessedImages) pairs."""
    import onnxruntime_genai as og

    from .scoring import _open

    model = _open(artifact_dir)
    stops = {int(s) for s in stop_ids}
    answers = []
    for ids, images in prompts:
        named = og.NamedTensors()
        named["input_ids"] = np.asarray([ids], dtype=np.int32)
        named["pixel_values"] = np.ascontiguousarray(images.pixel_values, dtype=np.float32)  # type: ignore[attr-defined]
        named["image_sizes"] = np.ascontiguousarray(images.image_sizes, dtype=np.int64)  # type: ignore[attr-defined]
        named["num_image_tokens"] = np.asarray(images.num_img_tokens, dtype=np.int64)  # type: ignore[attr-defined]
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
        generator = og.Generator(model, params)
        generator.set_inputs(named)
        answer: list[int] = []
        while not generator.is_done() and len(answer) < max_new_tokens:
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in stops:
                break
            answer.append(token)
        del generator
        answers.append(answer)
    return answers
