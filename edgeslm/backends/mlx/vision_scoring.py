"""Score the image side of an MLX artifact (build-time quality measurement, ``builder/vision_quality``).

``image_features`` runs the artifact's vision part alone (``vision_tower``), to compare its features
with the torch reference's; ``answer_tokens`` answers image questions greedily with the engine's own
parts (vision tower → ``embedded_prompt`` → mlx-lm's ``generate_step``), fed the same token ids and
pixel values the reference was given, so an accuracy difference is the artifact's.

Questions about the same image share everything up to its last image token (``<|user|>``, the image);
the KV cache of that prefix is computed once per image and each question continues from a copy of it
(only its own ~20 tokens are prefilled). Without Metal, mlx's CPU matmuls are slow (reference BLAS in the
Linux ``mlx[cpu]`` wheel), and this makes the 118 questions of ``edgeslm:vision-dev`` cost about as much
as 30 full prompts.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np


@lru_cache(maxsize=1)
def _tower(artifact_dir: str):
    from .vision_tower import VisionTower

    return VisionTower.load(Path(artifact_dir))


def image_features(artifact_dir: Path, pixel_values: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
    import mlx.core as mx

    features = _tower(str(artifact_dir)).image_features(pixel_values, image_sizes)
    return np.array(features.astype(mx.float32))


def answer_tokens(artifact_dir: Path, prompts: Iterable[tuple[list[int], object]], max_new_tokens: int,
                  stop_ids: Iterable[int]) -> list[list[int]]:
    """Greedy answers (stop token excluded) to (prompt ids, ProcessedImages) pairs."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    from .embedded_prompt import on_embeddings, prompt_embeddings
    from .engine import PREFILL_STEP, MlxEngine

    _tower.cache_clear()
    engine = MlxEngine(Path(artifact_dir))
    model = on_embeddings(engine.model)
    stops = {int(s) for s in stop_ids}
    answers: list[list[int]] = []
    shared: tuple[object, tuple[int, ...], list] | None = None  # (images, prefix ids, prefix KV cache)
    try:
        for ids, images in prompts:
            ids = list(ids)
            features = engine.image_features(images)  # type: ignore[arg-type]
            embeds = prompt_embeddings(engine.model, ids, features)
            tokens = mx.array([max(t, 0) for t in ids])
            cut = max((i for i, t in enumerate(ids) if t < 0), default=-1) + 1  # through the last image token
            cut = min(cut, len(ids) - 1)  # at least one token is left for generate_step
            if shared is None or shared[0] is not images or shared[1] != tuple(ids[:cut]):
                cache = make_prompt_cache(model)
                for start in range(0, cut, PREFILL_STEP):
                    end = min(cut, start + PREFILL_STEP)
                    model(tokens[start:end][None], cache=cache, input_embeddings=embeds[start:end][None])
                    mx.eval([c.state for c in cache])
                shared = (images, tuple(ids[:cut]), cache)
            steps = generate_step(tokens[cut:], model, max_tokens=max_new_tokens, prompt_cache=_copy(shared[2]),
                                  input_embeddings=embeds[cut:], prefill_step_size=PREFILL_STEP,
                                  sampler=lambda logprobs: mx.argmax(logprobs, axis=-1))
            answer: list[int] = []
            try:
                for token, _ in steps:
                    if int(token) in stops:
                        break
                    answer.append(int(token))
            finally:
                steps.close()
            answers.append(answer)
    finally:
        engine.close()
    return answers


def _copy(cache: list) -> list:
    """Fresh KV caches holding the prefix's keys and values (the prefix's own arrays are never written:
    the first update of a full cache allocates a new buffer)."""
    from mlx_lm.models.cache import KVCache

    copies = []
    for layer in cache:
        fresh = KVCache()
        keys, values = layer.state
        fresh.state = (keys * 1, values * 1)
        copies.append(fresh)
    return copies
