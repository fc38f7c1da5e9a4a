"""OpenAI-style message content parts → chat-template text with ``<|image_N|>`` placeholders + image sources.

Chat requests carry images as content parts (``{"type": "image_url", "image_url": {"url": ...}}``), but
Phi-3.5-vision's chat template takes plain strings and marks each image with ``<|image_N|>`` where it
stands in the conversation. This module does that rewrite, numbering images across the whole
conversation from 1 (the order ``expand_image_prompt`` and the vision encoder need), and returns the
image sources untouched: opening them is ``edgeslm.vision.image_files.open_image``'s job, which gets the
same label for its messages.

Each image part becomes ``<|image_K|>\\n`` at its position, the layout of the model card's prompts
(``<|user|>\\n<|image_1|>\\nWhat is shown?``). A plain string content is kept as it is, including any
``<|image_N|>`` tags the user wrote: those refer to images passed separately (the Python API's
``images=``), so no image is collected for them. Using both ways in one conversation is refused, since
the numbering could not be right for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeslm.vision.image_files import ImageInputError
from edgeslm.vision.image_prompt import count_image_tags

PART_TYPES = ("text", "image_url", "image")


@dataclass(frozen=True)
class ImageRef:
    """One image of a conversation: its source (path, URL, data URL or bytes) and where it came from."""

    source: str | bytes | Path
    label: str  # e.g. "messages[0].content[1]", also the OpenAI error's ``param``


def split_images(messages: list[dict]) -> tuple[list[dict[str, str]], list[ImageRef]]:
    """Messages with string contents (image parts replaced by placeholders) and the images in order.

    Other keys of each message (``role``, ``name``, ...) are copied; a ``None`` content becomes ``""``.
    Bad shapes raise :class:`ImageInputError` with ``param`` naming the field (``messages[0].content[1]``).
    """
    if not isinstance(messages, list):
        raise ImageInputError(f"messages must be a list of message objects, not {type(messages).__name__}",
                              param="messages")
    converted: list[dict[str, str]] = []
    images: list[ImageRef] = []
    literal_tag_at: str | None = None
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ImageInputError(f"{where} must be an object with role and content, not {type(message).__name__}",
                                  param=where)
        content = message.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
            if literal_tag_at is None and count_image_tags(text):
                literal_tag_at = f"{where}.content"
        elif isinstance(content, list):
            pieces = []
            for j, part in enumerate(content):
                param = f"{where}.content[{j}]"
                piece, image = _part(part, param, len(images) + 1)
                if image is not None:
                    images.append(image)
                elif literal_tag_at is None and count_image_tags(piece):
                    literal_tag_at = param
                pieces.append(piece)
            text = "".join(pieces)
        else:
            raise ImageInputError(f"{where}.content must be a string or a list of content parts, "
                                  f"not {type(content).__name__}", param=f"{where}.content")
        converted.append({**message, "content": text})
    if images and literal_tag_at is not None:
        raise ImageInputError(f"{literal_tag_at} contains a literal <|image_N|> placeholder, but the conversation "
                              "also has image content parts", param=literal_tag_at,
                              hint="give images either as content parts or as placeholders with separate images")
    return converted, images


def _part(part: object, param: str, number: int) -> tuple[str, ImageRef | None]:
    """(text to put in the content, the image if the part is one)."""
    if not isinstance(part, dict):
        raise ImageInputError(f"{param} must be a content part object, not {type(part).__name__}", param=param)
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise ImageInputError(f"{param}.text must be a string", param=param)
        return text, None
    if kind == "image_url":
        value = part.get("image_url")
        url = value.get("url") if isinstance(value, dict) else value
        if not isinstance(url, str) or not url.strip():
            raise ImageInputError(f"{param} needs image_url.url: a data:image/...;base64, URL or an http(s) URL",
                                  param=param)
        return f"<|image_{number}|>\n", ImageRef(url, param)
    if kind == "image":
        source = part.get("image")
        if isinstance(source, (bytearray, memoryview)):
            source = bytes(source)
        empty = not source if isinstance(source, bytes) else isinstance(source, str) and not source.strip()
        if not isinstance(source, (str, bytes, Path)) or empty:
            raise ImageInputError(f"{param}.image must be a file path, a URL or image bytes", param=param)
        return f"<|image_{number}|>\n", ImageRef(source, param)
    shown = "missing" if kind is None else repr(kind)
    raise ImageInputError(f"{param} has an unsupported content part type ({shown}); "
                          f"expected one of {', '.join(PART_TYPES)}", param=param)


def user_message(text: str, images: list[str] | tuple[str, ...] = ()) -> dict:
    """A user message for ``text`` with ``images`` (paths or URLs) before it, as content parts; plain text
    without images (what the CLI's ``--image`` and chat's ``/image`` send)."""
    if not images:
        return {"role": "user", "content": text}
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": str(image)}} for image in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}
