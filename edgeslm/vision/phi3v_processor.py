"""Phi-3.5-vision image preprocessing in numpy + Pillow, equal to the Hugging Face hub's processor.

The model was trained on what ``image_processing_phi3_v.py`` (``Phi3VImageProcessor``) produces, so a
device must produce the same ``pixel_values`` (within float rounding) without torch or torchvision:

1. HD transform: put the long side horizontal (``Image.TRANSPOSE`` for portrait images), pick the
   largest ``scale`` with ``scale * ceil(scale / ratio) <= num_crops``, resize to ``scale*336`` wide with
   Pillow's BILINEAR filter (torchvision's ``resize`` on a PIL image calls exactly that), pad the height
   to a multiple of 336 with white (top gets ``int(pad/2)``, the bottom the rest), transpose back.
   The transpose is kept (rather than resizing portrait images directly) because Pillow resizes in two
   uint8 passes and the pass order changes rounding.
2. ``ToTensor`` + ``Normalize``: ``(uint8 / 255 - mean) / std`` in float32, channels first.
3. Global image: ``torch.nn.functional.interpolate(hd, (336, 336), mode="bicubic")`` on the *normalized*
   float image, re-implemented here (:func:`bicubic_resize`).
4. Crops: the HD image cut into 336x336 tiles row by row, after the global image; zero tiles pad every
   image to ``num_crops + 1``.

``docs/vision.md`` has the formulas, the token count table and how other runtimes differ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from edgeslm.errors import UsageError
from edgeslm.vision.image_files import ImageInputError

CROP = 336
TOKENS_PER_CROP = 144  # 24x24 CLIP patches merged 2x2
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_NUM_CROPS = 16
_CUBIC_A = np.float32(-0.75)  # torch's upsample_bicubic2d coefficient (Pillow's BICUBIC uses -0.5)


@dataclass(frozen=True)
class ProcessedImages:
    """What the vision encoder takes: ``pixel_values`` [N, num_crops+1, 3, 336, 336] float32 (global image
    first, then the HD tiles row-major, then zero tiles), ``image_sizes`` [N, 2] int64 (height, width of
    each HD image) and the number of ``<|image_N|>`` placeholder tokens each image costs."""

    pixel_values: np.ndarray
    image_sizes: np.ndarray
    num_img_tokens: tuple[int, ...]
    # the images as given (PIL): for pipelines that preprocess raw images themselves (OpenVINO's VLMPipeline)
    sources: tuple = field(default=(), repr=False, compare=False)

    @property
    def count(self) -> int:
        return len(self.num_img_tokens)


def check_num_crops(num_crops: object) -> int:
    """``num_crops`` as an int in 1..16 (Phi-3.5-vision: 4 for multi-frame, 16 for single images)."""
    if isinstance(num_crops, bool) or not isinstance(num_crops, (int, np.integer)) \
            or not 1 <= int(num_crops) <= MAX_NUM_CROPS:
        raise UsageError(f"num_crops must be a whole number from 1 to {MAX_NUM_CROPS}, not {num_crops!r}")
    return int(num_crops)


def _scale(ratio: float, num_crops: int) -> int:
    """Tiles along the long side: the largest ``scale`` with ``scale * ceil(scale / ratio) <= num_crops``
    (the reference's loop, kept as a loop so that float rounding matches it)."""
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    return scale - 1


def _landscape_resize(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """(new_w, new_h) of the HD resize for an image with ``width >= height``."""
    ratio = width / height
    new_w = int(_scale(ratio, num_crops) * CROP)
    return new_w, int(new_w / ratio)


def _resize_target(width: int, height: int, num_crops: int) -> tuple[int, int, bool]:
    """(new_w, new_h, transposed) in the transposed frame; refuses sizes the reference would crash on."""
    if isinstance(width, bool) or isinstance(height, bool) or not isinstance(width, (int, np.integer)) \
            or not isinstance(height, (int, np.integer)) or width <= 0 or height <= 0:
        raise UsageError(f"image size must be two positive whole numbers, not {width!r}x{height!r}")
    num_crops = check_num_crops(num_crops)
    transposed = width < height
    long_side, short_side = (height, width) if transposed else (width, height)
    new_w, new_h = _landscape_resize(int(long_side), int(short_side), num_crops)
    if new_h < 1:
        raise ImageInputError(f"a {width}x{height} image is too thin for Phi-3.5-vision: at num_crops={num_crops} "
                              f"its short side would shrink to 0 pixels (aspect ratio above {new_w}:1)",
                              hint="crop or pad the image to a less extreme aspect ratio")
    return new_w, new_h, transposed


def hd_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """(hd_height, hd_width) of the padded HD image for an original ``width`` x ``height``, without decoding."""
    new_w, new_h, transposed = _resize_target(width, height, num_crops)
    padded_h = math.ceil(new_h / CROP) * CROP
    return (new_w, padded_h) if transposed else (padded_h, new_w)


def tokens_for_grid(rows: int, cols: int) -> int:
    """Placeholder tokens of an HD image of ``rows`` x ``cols`` tiles: tiles and global image (144 each),
    one newline token per row of 12 merged patches (``rows*12`` for the tiles, 12 for the global image)
    and one separator between them."""
    return (rows * cols + 1) * TOKENS_PER_CROP + 1 + (rows + 1) * 12


def image_token_count(width: int, height: int, num_crops: int) -> int:
    """Placeholder tokens an original ``width`` x ``height`` image costs (``num_img_tokens``)."""
    hd_h, hd_w = hd_size(width, height, num_crops)
    return tokens_for_grid(hd_h // CROP, hd_w // CROP)


def _grid_for_ratio(ratio: float, num_crops: int) -> tuple[int, int] | None:
    """(short-side tiles, long-side tiles) for a long/short aspect ``ratio``; None where the reference fails."""
    new_w = int(_scale(ratio, num_crops) * CROP)
    new_h = int(new_w / ratio)
    return (math.ceil(new_h / CROP), new_w // CROP) if new_h >= 1 else None


def tokens_per_crop_grid(num_crops: int) -> dict[str, int]:
    """``{"ROWSxCOLS": tokens}`` for every tile grid some image reaches at ``num_crops`` (for the manifest).

    The grid depends on the aspect ratio only, and changes only where ``ceil(scale/ratio)`` or the padded
    height changes: at ratios ``s/k`` and ``336*s/(336*m+1)``. Evaluating at those breakpoints and between
    them finds every reachable grid exactly. Not every grid with ``rows*cols <= num_crops`` is reachable:
    at ``num_crops >= 4`` even a square image gets 2x2 tiles, so there is no "1x1".
    """
    num_crops = check_num_crops(num_crops)
    points = {s / k for s in range(1, num_crops + 2) for k in range(1, num_crops + 2)}
    points |= {CROP * s / (CROP * m + 1) for s in range(1, num_crops + 1) for m in range(num_crops + 1)}
    points = sorted(p for p in points if p >= 1)
    candidates = points + [(a + b) / 2 for a, b in zip(points, points[1:])]
    grids: set[tuple[int, int]] = set()
    for ratio in candidates:
        grid = _grid_for_ratio(ratio, num_crops)
        if grid is not None:
            grids |= {grid, grid[::-1]}  # landscape (rows = short side) and its transpose
    ordered = sorted(grids, key=lambda g: (g[0] * g[1], g[0], g[1]))
    return {f"{rows}x{cols}": tokens_for_grid(rows, cols) for rows, cols in ordered}


def _cubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices [4, out] and weights [4, out] of torch's bicubic (align_corners=False) along one axis.

    As in ATen's ``compute_indices_weights_cubic``: float32 ``scale = in/out``, source coordinate
    ``(dst + 0.5) * scale - 0.5`` (not clamped at 0 for cubic), ``t`` = its distance from
    ``min(floor, in-1)`` clamped to [0, 1], Keys coefficients with A = -0.75, and the four taps
    ``floor-1 .. floor+2`` clamped to the image.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    real = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    index = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
    t = np.clip(real - index.astype(np.float32), np.float32(0), np.float32(1))
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    one, two = np.float32(1), np.float32(2)
    weights = np.stack([far(t + one), near(t), near(one - t), far(two - t)]).astype(np.float32)
    taps = np.clip(index[None, :] + np.arange(-1, 3)[:, None], 0, in_size - 1)
    return taps, weights


def bicubic_resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``torch.nn.functional.interpolate(x[None], (out_h, out_w), mode="bicubic")[0]`` for a float
    [C, H, W] array: align_corners=False, no antialiasing, separable (height, then width), float32.

    Each pass gathers the four taps with ``np.take`` into preallocated buffers and accumulates in place:
    4 x C x out_h x W multiply-adds instead of a dense [out, in] matrix product."""
    image = np.asarray(image, dtype=np.float32)
    channels, _, width = image.shape
    rows, row_w = _cubic_taps(image.shape[1], out_h)
    cols, col_w = _cubic_taps(width, out_w)
    tall, buf = np.empty((channels, out_h, width), np.float32), np.empty((channels, out_h, width), np.float32)
    for j in range(4):
        target = tall if j == 0 else buf
        np.take(image, rows[j], axis=1, out=target)
        target *= row_w[j][None, :, None]
        if j:
            tall += buf
    out, buf = np.empty((channels, out_h, out_w), np.float32), np.empty((channels, out_h, out_w), np.float32)
    for j in range(4):
        target = out if j == 0 else buf
        np.take(tall, cols[j], axis=2, out=target)
        target *= col_w[j]
        if j:
            out += buf
    return out


def hd_transform(image: Image.Image, num_crops: int) -> np.ndarray:
    """The reference ``HD_transform`` (resize + white padding) of ``image.convert("RGB")`` as uint8 [H, W, 3]."""
    new_w, new_h, transposed = _resize_target(image.width, image.height, num_crops)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    if image.size != (new_w, new_h):  # torchvision returns the image unchanged when no resize is needed
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    target = math.ceil(new_h / CROP) * CROP
    top = int((target - new_h) / 2)
    padded = np.full((target, new_w, 3), 255, dtype=np.uint8)
    padded[top:top + new_h] = np.asarray(image, dtype=np.uint8)
    return padded.transpose(1, 0, 2) if transposed else padded


def preprocess(images: Sequence[Image.Image], num_crops: int = 4, mean: Sequence[float] = CLIP_MEAN,
               std: Sequence[float] = CLIP_STD) -> ProcessedImages:
    """``pixel_values``, ``image_sizes`` and ``num_img_tokens`` for RGB-convertible PIL images, as
    ``Phi3VImageProcessor(num_crops=num_crops).preprocess(images)`` gives them."""
    num_crops = check_num_crops(num_crops)
    mean32 = _channel_values(mean, "mean")
    std32 = _channel_values(std, "std")
    if np.any(std32 == 0):
        raise UsageError("image std must not contain 0")
    images = list(images)
    for position, image in enumerate(images, 1):
        if not isinstance(image, Image.Image):
            raise UsageError(f"image {position} is a {type(image).__name__}, not a PIL image "
                             "(open files with edgeslm.vision.image_files.open_image)")
    # ToTensor + Normalize as a 256-entry table per channel: the same float32 operations in the same
    # order ((v / 255 - mean) / std), so bit-identical to torchvision, but one lookup per pixel.
    table = ((np.arange(256, dtype=np.float32) / np.float32(255))[None, :] - mean32[:, None]) / std32[:, None]
    pixel_values = np.zeros((len(images), num_crops + 1, 3, CROP, CROP), dtype=np.float32)
    sizes, tokens = [], []
    for i, image in enumerate(images):
        try:
            hd_uint8 = hd_transform(image, num_crops)
        except (OSError, SyntaxError, ValueError) as exc:  # a lazily opened PIL image that fails to decode
            raise ImageInputError(f"image {i + 1} cannot be decoded: {' '.join(str(exc).split())}") from None
        height, width = hd_uint8.shape[:2]
        hd = np.empty((3, height, width), dtype=np.float32)
        for channel in range(3):
            np.take(table[channel], hd_uint8[:, :, channel], out=hd[channel])
        rows, cols = height // CROP, width // CROP
        pixel_values[i, 0] = bicubic_resize(hd, CROP, CROP)
        pixel_values[i, 1:1 + rows * cols] = hd.reshape(3, rows, CROP, cols, CROP).transpose(1, 3, 0, 2, 4) \
            .reshape(rows * cols, 3, CROP, CROP)
        sizes.append((height, width))
        tokens.append(tokens_for_grid(rows, cols))
    image_sizes = np.array(sizes, dtype=np.int64).reshape(len(images), 2)
    return ProcessedImages(pixel_values=pixel_values, image_sizes=image_sizes, num_img_tokens=tuple(tokens),
                           sources=tuple(images))


def _channel_values(values: Sequence[float], name: str) -> np.ndarray:
    try:
        array = np.asarray([float(v) for v in values], dtype=np.float32)
    except (TypeError, ValueError):
        raise UsageError(f"image {name} must be three numbers, not {values!r}") from None
    if array.shape != (3,) or not np.all(np.isfinite(array)):
        raise UsageError(f"image {name} must be three finite numbers (R, G, B), not {values!r}")
    return array
