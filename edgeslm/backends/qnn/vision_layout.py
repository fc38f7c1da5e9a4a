"""The HD layout of Phi-3.5-vision's image tokens on the host (device side, numpy only).

The NPU's vision encoder (``vision_encoder``) gives, per image, the projected tokens of its crops in the
processor's order ([crops x 144, hidden]: the global crop first, then the sub-crops row-major, then zero
crops), and the build stored the projected separators (``sub_GN`` newline, ``glb_GN``). An image of
h x w sub-crops then becomes, as in the checkpoint's ``Phi3ImageEmbedding`` (``sub_glb`` order):

  12h rows of 12w sub-crop tokens, each row followed by the newline; ``glb_GN``;
  12 rows of the global crop's 12 tokens, each followed by the newline

which is ``(h·w + 1)·144 + 1 + (h + 1)·12`` tokens. Rows are picked with one integer index per token.
"""

from __future__ import annotations

import numpy as np

from ...errors import UsageError

CROP = 336


def layout_indices(rows: int, cols: int, side: int = 12) -> np.ndarray:
    """Per output token of an image of ``rows`` x ``cols`` sub-crops, its row in the bank
    [crop tokens (crop k at k·side², global crop k = 0); newline; glb_GN]."""
    per_crop = side * side
    crops = (1 + rows * cols) * per_crop
    newline, glb = crops, crops + 1
    r = np.arange(rows * side)[:, None]
    c = np.arange(cols * side)[None, :]
    crop = 1 + (r // side) * cols + c // side
    sub = crop * per_crop + (r % side) * side + c % side
    sub = np.concatenate([sub, np.full((rows * side, 1), newline)], 1).reshape(-1)
    g = np.arange(per_crop).reshape(side, side)
    glb_rows = np.concatenate([g, np.full((side, 1), newline)], 1).reshape(-1)
    return np.concatenate([sub, [glb], glb_rows]).astype(np.int64)


def image_grid(height: int, width: int, crops: int) -> tuple[int, int]:
    if height <= 0 or width <= 0 or height % CROP or width % CROP:
        raise UsageError(f"image size {height}x{width} (height x width) is not a grid of {CROP}-pixel crops")
    rows, cols = height // CROP, width // CROP
    if 1 + rows * cols > crops:
        raise UsageError(f"an image of {rows}x{cols} crops needs {1 + rows * cols} crops; the vision graph takes {crops}")
    return rows, cols


def image_tokens(crop_tokens: np.ndarray, separators: np.ndarray, height: int, width: int, crops: int) -> np.ndarray:
    """[image tokens, hidden] of one image from its encoder output [crops·144, hidden] (or [1, crops·144,
    hidden]) and the [2, hidden] projected separators (newline, glb_GN)."""
    tokens = crop_tokens.reshape(-1, crop_tokens.shape[-1])
    rows, cols = image_grid(height, width, crops)
    used = (1 + rows * cols) * (tokens.shape[0] // crops)
    bank = np.concatenate([tokens[:used], separators.astype(tokens.dtype)], 0)
    return bank[layout_indices(rows, cols)]


def encoder_input(pixels: np.ndarray, crops: int) -> np.ndarray:
    """One image's [crops', 3, 336, 336] pixel values as the encoder graph's [crops, 3, 336, 336] (zero crops
    appended when the runtime cut fewer; more than the graph takes is an error)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 4 or pixels.shape[1:] != (3, CROP, CROP):
        raise UsageError(f"pixel values of one image have shape {list(pixels.shape)}, expected [crops, 3, {CROP}, {CROP}]")
    if not np.isfinite(pixels).all():
        raise UsageError("pixel values hold NaN or inf")
    if pixels.shape[0] > crops:
        if np.any(pixels[crops:]):
            raise UsageError(f"the image was cut into more crops than the {crops} the vision graph was compiled for",
                             hint=f"use num_crops {crops - 1} or fewer, or rebuild with a larger qnn-context.num_crops")
        return np.ascontiguousarray(pixels[:crops])
    if pixels.shape[0] < crops:
        pixels = np.concatenate([pixels, np.zeros((crops - pixels.shape[0], 3, CROP, CROP), np.float32)])
    return np.ascontiguousarray(pixels)


def image_features(run, pixel_values: np.ndarray, image_sizes: np.ndarray, separators: np.ndarray,
                   crops: int) -> np.ndarray:
    """[total image tokens, hidden] of all images, in order: one encoder call per image."""
    sizes = np.asarray(image_sizes)
    if sizes.ndim != 2 or sizes.shape[1] != 2 or len(sizes) != len(pixel_values):
        raise UsageError(f"image_sizes {list(sizes.shape)} does not match {len(pixel_values)} images of pixel values")
    out = []
    for pixels, (height, width) in zip(pixel_values, sizes.tolist()):
        image_grid(int(height), int(width), crops)
        tokens = run({"pixel_values": encoder_input(pixels, crops)})[0]
        out.append(image_tokens(tokens, separators, int(height), int(width), crops))
    return np.concatenate(out, 0)


def prompt_rows(embeddings: np.ndarray, ids: list[int], features: np.ndarray | None) -> np.ndarray | None:
    """[len(ids), hidden] float32 embeddings with the image features at the negative ids, in order (None for
    a text-only prompt)."""
    ids_array = np.asarray(ids, dtype=np.int64)
    image = ids_array < 0
    count, given = int(image.sum()), 0 if features is None else int(features.shape[0])
    if count != given:
        raise UsageError(f"the prompt has {count} image positions (negative ids), the images give {given} feature rows")
    if not count:
        return None
    if int(ids_array.max()) >= embeddings.shape[0]:
        raise UsageError(f"token id {int(ids_array.max())} is outside the vocabulary of {embeddings.shape[0]}")
    rows = embeddings[np.maximum(ids_array, 0)].astype(np.float32)
    rows[image] = features
    return rows
