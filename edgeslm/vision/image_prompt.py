"""``<|image_N|>`` placeholders → token ids with ``-N`` image slots, as the Phi-3-vision processors do.

The hub's ``Phi3VProcessor`` (and onnxruntime-genai's phi3v processor) split the prompt at the
``<|image_N|>`` tags, tokenize each text chunk on its own *with* the tokenizer's special tokens (so every
chunk, also the ones after an image, starts with BOS ``<s>`` = 1) and put ``num_img_tokens[N-1]`` copies
of ``-N`` where the tag was. The vision embedding later overwrites every negative id with image
features. Example for Phi-3.5-vision's tokenizer and a 757-token image::

    "<|user|>\\n<|image_1|>\\nHow many shapes are there?<|end|>\\n<|assistant|>\\n"
    → [1, 32010, 29871, 13, -1 x 757, 1, 29871, 13, 5328, 1784, 25834, 526, 727, 29973, 32007, 29871, 13, 32001]

The ``tokenizers`` library (``Tokenizer.encode(chunk, add_special_tokens=True)`` on ``tokenizer.json``)
gives exactly the hub's ids here, including the ``29871`` ("▁") after ``<|user|>`` and ``<|end|>`` and
the trailing "\\n" that ``<|assistant|>``'s ``rstrip`` swallows; no correction is applied.

Stricter than the hub on purpose: tags must be ``<|image_1|>`` .. ``<|image_n|>`` in that order, once
each, one per image. The model fills the negative positions with the images' features in image order
regardless of the number in the tag, so a repeated or reordered tag (which the hub accepts) would put
features in the wrong place or run out of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from edgeslm.vision.image_files import ImageInputError

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")


def count_image_tags(text: str) -> int:
    """How many ``<|image_N|>`` placeholders ``text`` contains."""
    return len(IMAGE_TAG.findall(text))


def _images(count: int) -> str:
    if count == 0:
        return "no image was given"
    return f"{count} image{'s' if count != 1 else ''} {'was' if count == 1 else 'were'} given"


def _placeholders(count: int) -> str:
    return "no <|image_N|> placeholder" if count == 0 else \
        f"{count} <|image_N|> placeholder{'s' if count != 1 else ''}"


def check_image_tags(prompt: str, image_count: int) -> list[re.Match]:
    """The prompt's tags, checked against ``image_count`` images (one-line ImageInputError otherwise)."""
    tags = list(IMAGE_TAG.finditer(prompt))
    numbers = [int(tag.group(1)) for tag in tags]
    if len(tags) != image_count:
        hint = "put <|image_1|> .. <|image_n|> in the prompt where the images go, one per image" if image_count else \
            "pass the images the prompt refers to, or remove the placeholders"
        raise ImageInputError(f"{_images(image_count)} but the prompt has {_placeholders(len(tags))}", hint=hint)
    expected = list(range(1, image_count + 1))
    if numbers != expected:
        stray = [n for n in numbers if not 1 <= n <= image_count]
        if stray:
            message = (f"the prompt's <|image_{stray[0]}|> matches no image: {_images(image_count)}, so the "
                       f"placeholders are <|image_1|> to <|image_{image_count}|>")
        else:
            message = "the prompt's image placeholders must be numbered from 1 in order, once each; got " + \
                ", ".join(f"<|image_{n}|>" for n in numbers)
        raise ImageInputError(message, hint="number the placeholders <|image_1|>, <|image_2|>, ... in the order "
                                            "the images are given")
    return tags


def expand_image_prompt(prompt: str, encode: Callable[[str], list[int]], num_img_tokens: Sequence[int]) -> list[int]:
    """Token ids of ``prompt`` with each ``<|image_N|>`` replaced by ``num_img_tokens[N-1]`` copies of ``-N``.

    ``encode`` tokenizes one text chunk and adds the tokenizer's BOS itself (the hub processor calls
    ``tokenizer(chunk).input_ids``); it is called once per chunk, also for empty ones (an empty chunk
    still gives BOS, as in the hub processor).
    """
    counts = [int(n) for n in num_img_tokens]
    if any(n <= 0 for n in counts):
        raise ImageInputError(f"image token counts must be positive, not {counts}")
    tags = check_image_tags(prompt, len(counts))
    ids: list[int] = []
    start = 0
    for tag in tags:
        ids.extend(encode(prompt[start:tag.start()]))
        number = int(tag.group(1))
        ids.extend([-number] * counts[number - 1])
        start = tag.end()
    ids.extend(encode(prompt[start:]))
    return ids
