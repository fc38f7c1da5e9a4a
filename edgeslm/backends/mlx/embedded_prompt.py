"""mlx-lm's Phi-3 text model run on input embeddings, and a prompt's embeddings with its image features.

mlx-lm's ``generate_step`` takes ``input_embeddings`` for models whose ``__call__`` accepts them; its
``phi3`` model (0.31) takes token ids only. :class:`Phi3OnEmbeddings` wraps the loaded model (same
modules, same weights, same KV cache) and runs its decoder layers on given embeddings for the prompt,
and on token ids (the wrapped model itself) for every generated token. A newer mlx-lm whose model takes
``input_embeddings`` is used as it is.

:func:`prompt_embeddings` is the Phi-3-vision embedding step: the prompt's ids clamped at 0 through
``embed_tokens``, then the positions whose id is negative (image placeholders, ``vision.image_prompt``)
replaced, in order, by the image features of all images in order -- as the torch reference does.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import UsageError


def takes_embeddings(model: Any) -> bool:
    try:
        return "input_embeddings" in inspect.signature(model.__call__).parameters
    except (TypeError, ValueError):
        return False


def on_embeddings(model: Any) -> Any:
    """A model ``generate_step`` can feed ``input_embeddings`` (the model itself where it already takes them)."""
    return model if takes_embeddings(model) else Phi3OnEmbeddings(model)


class Phi3OnEmbeddings:
    """``model(inputs, cache, input_embeddings=...)`` for an mlx-lm Phi-3 ``Model`` (``model.model`` the decoder)."""

    def __init__(self, model: Any):
        from mlx_lm.models.base import create_attention_mask

        self.inner = model
        self._mask = create_attention_mask

    @property
    def layers(self) -> Any:  # what mlx-lm's make_prompt_cache counts
        return self.inner.layers

    def __call__(self, inputs: Any, cache: Any = None, input_embeddings: Any = None) -> Any:
        if input_embeddings is None:
            return self.inner(inputs, cache)
        body = self.inner.model
        h = input_embeddings
        caches = cache if cache is not None else [None] * len(body.layers)
        mask = self._mask(h, caches[0])
        for layer, layer_cache in zip(body.layers, caches):
            h = layer(h, mask, layer_cache)
        h = body.norm(h)
        if getattr(self.inner.args, "tie_word_embeddings", False):
            return body.embed_tokens.as_linear(h)
        return self.inner.lm_head(h)


def prompt_embeddings(model: Any, prompt_ids: Sequence[int], features: Any) -> Any:
    """[len(prompt_ids), hidden] embeddings: token embeddings, image features at the negative ids."""
    import mlx.core as mx

    ids = np.asarray(list(prompt_ids), dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise UsageError("prompt_ids must be a non-empty list of token ids")
    vocab = int(model.model.embed_tokens.weight.shape[0])
    if int(ids.max()) >= vocab:
        raise UsageError(f"token id {int(ids.max())} is outside the vocabulary of {vocab}")
    embeds = model.model.embed_tokens(mx.array(np.maximum(ids, 0).astype(np.int32)))
    image = ids < 0
    count = int(image.sum())
    given = 0 if features is None else int(features.shape[0])
    if count != given:
        raise UsageError(f"the prompt has {count} image positions (negative ids), the images give {given} "
                         f"feature rows")
    if count == 0:
        return embeds
    if features.shape[1] != embeds.shape[1]:
        raise UsageError(f"image features have width {features.shape[1]}, the text model {embeds.shape[1]}")
    source = np.zeros(ids.size, dtype=np.int32)
    source[image] = np.arange(count, dtype=np.int32)
    rows = features.astype(embeds.dtype)[mx.array(source)]
    return mx.where(mx.array(image)[:, None], rows, embeds)
