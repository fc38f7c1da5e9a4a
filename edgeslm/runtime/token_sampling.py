"""The next token from one row of logits, in numpy: the sampler of the engines that run their own decode loop
(QNN's part loop, OpenVINO's plain-Core vision path). Greedy is argmax; otherwise temperature, then top-k, then
top-p (the smallest prefix of the sorted probabilities that reaches it), then a draw from ``rng``."""

from __future__ import annotations

import numpy as np

from .generation import GenerationOptions


def pick_token(logits: np.ndarray, options: GenerationOptions, rng: np.random.Generator) -> int:
    if options.greedy:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / options.temperature  # greedy is temperature 0: here it is > 0
    order = np.argsort(-scaled)
    if options.top_k:
        order = order[:options.top_k]
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    if options.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), options.top_p) + 1)
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return int(order[rng.choice(len(order), p=probs)])
