"""Score the image side of a QNN artifact (build-time quality measurement, ``builder/vision_quality``).

As the text scorer (``scoring``), the shipped portable graphs run on ONNX Runtime's CPU provider: the
decoder's QDQ graphs (what the HTP runs), and the encoder's QDQ graph (a16w8) or its float32 graph (float16:
the HTP's fp16 result is within cosine 0.99999 of it, tests/test_qnn_vision.py), much faster than the
simulator. Without shipped QDQ graphs the first SoC's compiled graphs run on the HTP backend.

``image_features`` runs the vision encoder + host HD layout alone (compared with the torch reference's
features); ``answer_tokens`` answers image questions greedily through the engine's own loop
(``KvCacheLoop`` over every decoder part, the prompt's embeddings with the image features in place), fed
the token ids and pixel values the reference was given. Questions about one image share everything up to
its last image token: that prefix's KV cache is computed once per image and restored for each question.

The CPU provider holds each QDQ part's weights as float32 once loaded and answering needs every part at
once: about 4 bytes per decoder weight (15 GB for Phi-3.5-vision's decoder), so full-size builds are
measured with ``--no-eval`` (docs/benchmarks.md); the demo model's parts take a few MB.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from . import ep_sessions
from .artifact_files import QnnArtifact
from .vision_layout import prompt_rows


def _sessions(artifact: QnnArtifact):
    """(where, make_runner) for the artifact's scoring graphs; ``make(path, vision=True)`` for the encoder."""
    if artifact.config.get("qdq") and artifact.config["vision"].get("qdq"):
        return "qdq", lambda path, vision=False: ep_sessions.runner(ep_sessions.cpu_session(path, 2))
    where = next(iter(artifact.config["socs"]))
    entry = artifact.config["socs"][where]
    return where, lambda path, vision=False: ep_sessions.runner(ep_sessions.htp_session(
        path, entry["soc_model"], entry["htp_arch"], threads=2, **(artifact.vision_options() if vision else {})))


def image_features(artifact_dir: Path, pixel_values: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
    artifact = QnnArtifact.open(artifact_dir)
    where, make = _sessions(artifact)
    return artifact.image_features(make(artifact.vision_file(where), True), pixel_values, image_sizes)


def answer_tokens(artifact_dir: Path, prompts: Iterable[tuple[list[int], object]], max_new_tokens: int,
                  stop_ids: Iterable[int]) -> list[list[int]]:
    """Greedy answers (stop token excluded) to (prompt ids, ProcessedImages) pairs."""
    artifact = QnnArtifact.open(artifact_dir)
    where, make = _sessions(artifact)
    vision = make(artifact.vision_file(where), True)
    loop = artifact.loop(make, where)
    stops = {int(s) for s in stop_ids}
    answers: list[list[int]] = []
    features_of: tuple[object, np.ndarray] | None = None
    shared: tuple[object, tuple[int, ...], tuple] | None = None  # (images, prefix ids, saved KV cache)
    for ids, images in prompts:
        ids = list(ids)
        if features_of is None or features_of[0] is not images:
            features_of = (images, artifact.image_features(vision, images.pixel_values, images.image_sizes))
        rows = prompt_rows(artifact.embeddings, ids, features_of[1])
        cut = max((i for i, t in enumerate(ids) if t < 0), default=-1) + 1  # through the last image token
        cut = min(cut, len(ids) - 1)
        if shared is None or shared[0] is not images or shared[1] != tuple(ids[:cut]):
            loop.reset()
            if cut:
                loop.prefill(ids[:cut], None if rows is None else rows[:cut])
            shared = (images, tuple(ids[:cut]), loop.snapshot())
        loop.restore(shared[2])
        logits = loop.prefill(ids[cut:], None if rows is None else rows[cut:])[-1]
        answer: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits))
            if token in stops or loop.length >= loop.context:
                break
            answer.append(token)
            logits = loop.decode(token)
        answers.append(answer)
    return answers
