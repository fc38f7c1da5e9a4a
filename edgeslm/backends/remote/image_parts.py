"""Messages for a remote chat service: text as it is, images only as base64 ``data:`` URLs.

The same message shapes as the local runtime takes (a string content, or OpenAI-style parts: ``text``,
``image_url`` with a ``data:`` URL, a ``file://`` URL or a path, ``image`` with a path or bytes). A local
image is read here (size-capped, its type told by its first bytes) and sent as a data URL; an
``http(s)`` URL is never passed on, so the remote service never fetches anything on the user's behalf,
and nothing is fetched here either. Standard library only: no Pillow on a device that only falls back.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ...errors import RemoteInputError

MAX_IMAGE_BYTES = 20 * 1024 * 1024
ROLES = ("system", "user", "assistant")
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


def has_images(messages: Any) -> bool:
    """Whether any message has an image part (what routes a prompt to a vision model)."""
    return isinstance(messages, list) and any(
        isinstance(m, dict) and isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") in ("image_url", "image") for p in m["content"])
        for m in messages)


def remote_messages(messages: Any, system: str | None, allow_files: bool) -> list[dict[str, Any]]:
    """OpenAI chat messages with every image as a data URL; ``system`` replaces the conversation's own."""
    if not isinstance(messages, list) or not messages:
        raise RemoteInputError("messages must be a non-empty list", param="messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RemoteInputError(f"{where} needs a role of {', '.join(ROLES)}", param=f"{where}.role")
        content = message.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            content = [_part(part, f"{where}.content[{j}]", allow_files) for j, part in enumerate(content)]
        elif not isinstance(content, str):
            raise RemoteInputError(f"{where}.content must be a string or a list of content parts",
                                   param=f"{where}.content")
        out.append({"role": message["role"], "content": content})
    if system:
        out = [{"role": "system", "content": system}, *[m for m in out if m["role"] != "system"]]
    if not any(m["role"] == "user" and _has_content(m["content"]) for m in out):
        raise RemoteInputError("the prompt is empty", hint="give at least one non-empty user message", param="messages")
    return out


def _has_content(content: str | list[dict[str, Any]]) -> bool:
    if isinstance(content, str):
        return bool(content.strip())
    return any(p["type"] == "image_url" or p["text"].strip() for p in content)


def _part(part: Any, param: str, allow_files: bool) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise RemoteInputError(f"{param} must be a content part object", param=param)
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise RemoteInputError(f"{param}.text must be a string", param=param)
        return {"type": "text", "text": part["text"]}
    if kind == "image_url":
        value = part.get("image_url")
        source = value.get("url") if isinstance(value, dict) else value
    elif kind == "image":
        source = part.get("image")
        if isinstance(source, (bytearray, memoryview)):
            source = bytes(source)
    else:
        raise RemoteInputError(f"{param} has an unsupported content part type ({kind!r}); expected text, "
                               "image_url or image", param=param)
    return {"type": "image_url", "image_url": {"url": data_url(source, param, allow_files)}}


def data_url(source: Any, label: str, allow_files: bool = True) -> str:
    """A checked ``data:image/...;base64,`` URL for an image given as a data URL, a path, a file URL or bytes."""
    if isinstance(source, bytes):
        return _encode(source, label)
    if isinstance(source, Path):
        return _encode(_read_file(source, label, allow_files), label)
    if not isinstance(source, str) or not source.strip():
        raise RemoteInputError(f"{label} needs an image: a data:image/...;base64, URL, a file path or bytes", param=label)
    scheme = source.split(":", 1)[0].lower() if ":" in source[:12] else ""
    if scheme == "data":
        return _encode(_data_url_bytes(source, label), label)
    if scheme in ("http", "https"):
        raise RemoteInputError(f"{label}: image URLs are not sent to the remote fallback (only data: URLs)",
                               hint="download the image and pass the file, or send a data:image/...;base64, URL",
                               param=label)
    if scheme == "file":
        parts = urllib.parse.urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise RemoteInputError(f"{label}: file:// URL on another host cannot be read", param=label)
        return _encode(_read_file(Path(urllib.request.url2pathname(parts.path)), label, allow_files), label)
    return _encode(_read_file(Path(source), label, allow_files), label)


def _read_file(path: Path, label: str, allow_files: bool) -> bytes:
    if not allow_files:
        raise RemoteInputError(f"{label}: reading image files from this machine is not allowed here", param=label,
                               hint="send the image as a data:image/...;base64, URL")
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise _too_large(label, size)
        return path.read_bytes()
    except OSError as exc:
        raise RemoteInputError(f"{label}: cannot read {path}: {exc.strerror or exc}", param=label) from None


def _data_url_bytes(url: str, label: str) -> bytes:
    header, comma, payload = url[5:].partition(",")
    params = [p.strip().lower() for p in header.split(";")]
    if not comma or "base64" not in params[1:]:
        raise RemoteInputError(f"{label}: expected a data:image/...;base64,<data> URL", param=label)
    compact = "".join(urllib.parse.unquote(payload).split())
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RemoteInputError(f"{label}: the data: URL holds invalid base64 data", param=label) from None


def _encode(data: bytes, label: str) -> str:
    if len(data) > MAX_IMAGE_BYTES:
        raise _too_large(label, len(data))
    mime = _image_type(data)
    if mime is None:
        raise RemoteInputError(f"{label} is not a PNG, JPEG, GIF, WebP or BMP image", param=label)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _image_type(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), None)


def _too_large(label: str, size: int) -> RemoteInputError:
    return RemoteInputError(f"{label} is {size:,} bytes, over the {MAX_IMAGE_BYTES // 2**20} MiB the remote "
                            "fallback sends", hint="resize it first", param=label)
