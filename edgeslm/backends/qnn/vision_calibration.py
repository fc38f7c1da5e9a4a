"""Calibration images for the QNN vision encoder and the image prompts the decoder is calibrated on.

16-bit activation ranges need real feeds. By default the build draws its own images (``synthetic_images``):
plain, gradient and noise backgrounds at the aspect ratios the processor meets (square, landscape,
portrait, a thin strip), with 0-3 coloured shapes, from a fixed seed; never the evaluation images, so
the measured accuracy is not the calibration set's. ``vision_calibration_images`` names a folder of the
user's own images instead (photos from the deployment, which is what should be used for real models).

The same images calibrate the decoder's image side: each one becomes an image prompt whose token
embeddings have the float encoder's features at the image positions (``image_prompt``), so the first
decoder part sees image features, not only text embeddings, when its input ranges are recorded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ...errors import UsageError
from ...vision.image_files import open_image
from ...vision.phi3v_processor import preprocess

SIZES = ((336, 336), (1280, 720), (720, 1280), (900, 64), (1920, 1080), (500, 700), (640, 480), (1000, 1000))
PROMPT = "<|user|>\n<|image_1|>\nDescribe the image.<|end|>\n<|assistant|>\nThe image shows"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def synthetic_images(count: int, seed: int = 20261202) -> list:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        kind = i % 3
        if kind == 0:
            pixels = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (height, width, 3))
        elif kind == 1:
            ramp = np.linspace(0, 1, width)[None, :, None]
            a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            pixels = np.broadcast_to(a + (b - a) * ramp, (height, width, 3)).astype(np.uint8)
        else:
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(0, 4))):
            x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
            x1 = x0 + int(rng.integers(max(2, width // 8), max(3, width // 3)))
            y1 = y0 + int(rng.integers(max(2, height // 8), max(3, height // 3)))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            shape = int(rng.integers(0, 3))
            if shape == 0:
                draw.rectangle((x0, y0, x1, y1), fill=colour)
            elif shape == 1:
                draw.ellipse((x0, y0, x1, y1), fill=colour)
            else:
                draw.polygon(((x0, y1), ((x0 + x1) // 2, y0), (x1, y1)), fill=colour)
        images.append(image)
    return images


def folder_images(folder: Path, count: int) -> list:
    if not folder.is_dir():
        raise UsageError(f"qnn-context.vision_calibration_images: {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not files:
        raise UsageError(f"qnn-context.vision_calibration_images: {folder} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return [open_image(p, label=p.name) for p in files]


def calibration_pixels(images: list, num_crops: int) -> list:
    """Per image its ProcessedImages at ``num_crops`` (the encoder graph's input: ``pixel_values[0]``)."""
    return [preprocess([image], num_crops=num_crops) for image in images]


class PixelReader(CalibrationDataReader):
    """Feeds ``pixel_values`` [crops, 3, 336, 336] of each calibration image once."""

    def __init__(self, processed: list):
        self.processed, self.cursor, self.limit = processed, 0, len(processed)

    def __len__(self) -> int:
        return len(self.processed)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.cursor, self.limit = start_index, min(end_index, len(self.processed))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.cursor >= self.limit:
            return None
        self.cursor += 1
        return {"pixel_values": self.processed[self.cursor - 1].pixel_values[0]}


def image_prompt(encode, features: np.ndarray, embeddings: np.ndarray) -> tuple[list[int], np.ndarray, int]:
    """An image prompt and the start of an answer: ids (-1 at image positions), their float32 embeddings (the
    token table's rows, the image ``features`` [image tokens, hidden] at the image positions) and the length
    of the prompt part (through ``<|assistant|>``); the answer's tokens are the decode steps."""
    from ...vision.image_prompt import expand_image_prompt

    question, answer = PROMPT.rsplit("\n", 1)
    ids = expand_image_prompt(question + "\n", encode, [features.shape[0]])
    prompt_length = len(ids)
    ids += encode(answer)[1:]  # without its BOS
    rows = embeddings[np.maximum(np.asarray(ids), 0)].astype(np.float32)
    rows[np.asarray(ids) < 0] = features
    return ids, rows, prompt_length
