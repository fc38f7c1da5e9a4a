"""Messages → what an engine runs: token ids, and for an artifact that takes images, the images.

One path for every surface (``edgeslm run --image``, ``chat``'s ``/image``, ``LLM.chat`` with
OpenAI-style content parts, ``serve``'s ``image_url`` parts): image parts become ``<|image_N|>``
placeholders in the rendered chat template (``message_parts``), the images are opened with limits
(``vision.image_files``) and preprocessed on the device (``vision.phi3v_processor``), and each
placeholder is expanded to its image's token count (``vision.image_prompt``). The prompt's length,
image tokens included, is checked against the context envelope before the engine runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..bundle.manifest import VisionInfo
from ..errors import ContextLengthError
from .chat_template import ChatTemplate, validate_messages
from .message_parts import ImageRef, split_images


@dataclass(frozen=True)
class PreparedPrompt:
    ids: list[int]
    images: Any = None  # vision.phi3v_processor.ProcessedImages, or None
    image_tokens: int = 0
    preprocess_s: float = 0.0  # opening + preprocessing the images

    @property
    def image_count(self) -> int:
        return 0 if self.images is None else self.images.count


def prepare_prompt(messages: Any, system: str | None, template: ChatTemplate, encode: Callable[[str], list[int]],
                   vision: VisionInfo | None, *, model_name: str, allow_remote_images: bool = False,
                   allow_files: bool = True, num_crops: int | None = None) -> PreparedPrompt:
    """``num_crops`` overrides the artifact's crops per image (fewer: fewer image tokens, less detail)."""
    from ..vision.image_files import ImageInputError

    texts, refs = split_images(messages)
    if refs and vision is None:
        raise ImageInputError(f"{model_name} does not take images: this bundle was built from a text-only model",
                              hint="send text only, or use a bundle built from Phi-3.5-vision", param=refs[0].label)
    texts = validate_messages(texts)
    if system:
        texts = [{"role": "system", "content": system}, *[m for m in texts if m["role"] != "system"]]
    rendered = template.render(texts)
    if vision is None:
        return PreparedPrompt(encode(rendered))
    from ..vision.image_prompt import expand_image_prompt
    from ..vision.phi3v_processor import preprocess

    started = time.perf_counter()
    crops = num_crops or vision.num_crops
    images = [_open(ref, vision, crops, allow_remote_images, allow_files) for ref in refs]
    processed = preprocess(images, num_crops=crops) if images else None
    counts = processed.num_img_tokens if processed is not None else ()
    ids = expand_image_prompt(rendered, encode, counts)
    return PreparedPrompt(ids, processed, sum(counts), time.perf_counter() - started)


def _open(ref: ImageRef, vision: VisionInfo, num_crops: int, allow_remote: bool, allow_files: bool) -> Any:
    """One image, opened with the artifact's limits and checked against its crop rule. A refusal carries
    ``param`` = the content part it came from (``messages[0].content[1]``), which the server answers with."""
    from ..vision.image_files import ImageInputError, open_image
    from ..vision.phi3v_processor import hd_size

    try:
        image = open_image(ref.source, label=ref.label, max_pixels=vision.max_image_pixels,
                           allow_remote=allow_remote, allow_files=allow_files)
    except ImageInputError as exc:
        exc.param = exc.param or ref.label
        raise
    try:
        hd_size(*image.size, num_crops)  # an image too thin for the HD transform, named here
    except ImageInputError as exc:
        raise ImageInputError(f"{ref.label}: {exc.message}", hint=exc.hint, param=ref.label) from None
    return image


def check_length(prepared: PreparedPrompt, max_prompt_tokens: int, context_tokens: int, artifact_id: str) -> None:
    if len(prepared.ids) <= max_prompt_tokens:
        return
    images = (f" ({prepared.image_tokens:,} of them for {prepared.image_count} image"
              f"{'s' if prepared.image_count != 1 else ''})") if prepared.image_count else ""
    raise ContextLengthError(
        f"the prompt has {len(prepared.ids):,} tokens{images}; this host allows {max_prompt_tokens:,} "
        f"(context {context_tokens:,} for {artifact_id})",
        hint="send fewer or smaller images, shorten the conversation, /reset the chat, or pass a larger "
             "[[context]] if RAM allows" if images else
             "shorten the conversation, /reset the chat, or pass a larger [[context]] if RAM allows")
