"""Score a Phi-3.5-vision OpenVINO artifact (build-time quality measurement), on the CPU.

* ``window_logits``: text windows through the text embeddings IR and the stateful language model.
* ``image_features``: the vision embeddings IR on the reference's own pixel values, the pipeline's HD
  layout (the same 2x2 merge, ``sub_GN`` newlines and ``glb_GN`` from the artifact's config.json,
  in its 4096 layout) and the projection IR: the conversion's error alone, compared with the torch
  reference's features.
* ``answer_tokens``: answers through the device engine (``vision_engine``: openvino-genai's
  ``VLMPipeline`` from the prompt text and the raw images, its own preprocessing and tokenization
  included; the Core path for non-square crop grids), so the accuracy is what the device runs. The
  prompt texts come with the ids (``ANSWERS_FROM_TEXT``); a prompt the engine tokenizes to other ids,
  or that VLMPipeline counts otherwise, is an error (the two would not answer the same input).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ...errors import BuildError

ANSWERS_FROM_TEXT = True  # vision_quality passes the prompt texts and image paths


def window_logits(artifact_dir: Path, windows: list[list[int]]) -> Iterator[np.ndarray]:
    import openvino as ov

    core = ov.Core()
    embed = core.compile_model(str(artifact_dir / "openvino_text_embeddings_model.xml"), "CPU")
    lm = core.compile_model(str(artifact_dir / "openvino_language_model.xml"), "CPU")
    for window in windows:
        request = lm.create_infer_request()
        request.reset_state()
        n = len(window)
        embeds = embed(np.array([window], dtype=np.int64))[0]
        request.infer({"inputs_embeds": embeds, "attention_mask": np.ones((1, n), dtype=np.int64),
                       "position_ids": np.arange(n, dtype=np.int64)[None, :], "beam_idx": np.zeros((1,), np.int32)})
        yield np.array(request.get_tensor("logits").data, dtype=np.float32)[0, :-1]


def image_features(artifact_dir: Path, pixel_values: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
    from .vision_features import VisionFeatures

    return VisionFeatures(artifact_dir, "CPU")(pixel_values, image_sizes)


def answer_tokens(artifact_dir: Path, prompts: Iterable[tuple[list[int], object]], max_new_tokens: int,
                  stop_ids: Iterable[int], texts: list[str] | None = None,
                  image_paths: list[str] | None = None) -> list[list[int]]:
    """Greedy answers (stop token excluded) through the device engine on the CPU: VLMPipeline, or the
    Core path for non-square crop grids, exactly as ``edgeslm run`` would answer."""
    from ...runtime.generation import GenerationOptions
    from ...vision.image_prompt import expand_image_prompt
    from .vision_engine import OpenVinoVisionEngine
    from .vision_features import square_grids

    pairs = list(prompts)
    if texts is None or len(texts) != len(pairs):
        raise BuildError("the OpenVINO vision scorer answers from the prompt texts")
    stops = {int(s) for s in stop_ids}
    config = json.loads((artifact_dir / "preprocessor_config.json").read_text(encoding="utf-8"))
    engine = OpenVinoVisionEngine(artifact_dir, "cpu", {}, int(config["num_crops"]), tuple(stops))
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    answers = []
    try:
        for (ids, images), text in zip(pairs, texts):
            mine = expand_image_prompt(text, engine.encode, images.num_img_tokens)  # type: ignore[attr-defined]
            if mine != list(ids):
                raise BuildError("the artifact's tokenizer gives other ids than the reference's for a prompt")
            engine.last_metrics = None
            answer = []
            for token in engine.generate(list(ids), options, len(ids) + max_new_tokens, images):
                if token in stops:
                    break
                answer.append(token)
            if square_grids(images.image_sizes):  # type: ignore[attr-defined]
                used = engine.last_metrics.get_num_input_tokens() if engine.last_metrics is not None else len(ids)
                if used != len(ids):
                    raise BuildError(f"VLMPipeline made {used} prompt tokens of a prompt the reference saw as "
                                     f"{len(ids)}")
            answers.append(answer)
    finally:
        engine.close()
    return answers
