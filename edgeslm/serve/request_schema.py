"""Parse and validate ``POST /v1/chat/completions`` bodies; errors come back as OpenAI error objects."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
KNOWN_FIELDS = {"model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
                "n", "stream", "stream_options", "user", "top_k", "frequency_penalty", "presence_penalty"}


class ApiError(Exception):
    """An error answered to the client: HTTP status + OpenAI-style error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]  # content: a string, or a list of text / image_url parts
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, top_k, seed, stop


def parse_chat_request(raw: bytes) -> ChatRequest:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise ApiError(400, f"unsupported field(s): {', '.join(unknown)}", param=unknown[0])
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required and must be a string", param="model")
    messages = _messages(body.get("messages"))
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise ApiError(400, f"'{name}' is not supported", param=name)
    options: dict[str, Any] = {}
    if body.get("temperature") is not None:
        options["temperature"] = _number(body, "temperature", 0.0, 2.0)
    if body.get("top_p") is not None:
        options["top_p"] = _number(body, "top_p", 1e-9, 1.0)
    if body.get("top_k") is not None:
        options["top_k"] = _integer(body, "top_k", 0, 1_000_000)
    if body.get("seed") is not None:
        options["seed"] = _integer(body, "seed", 0, 2**63 - 1)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not 0 < len(stops) <= 4 or not all(isinstance(s, str) and s for s in stops):
            raise ApiError(400, "'stop' must be a non-empty string or a list of 1 to 4 non-empty strings", param="stop")
        options["stop"] = tuple(stops)
    max_tokens = None
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            max_tokens = _integer(body, name, 1, 1_000_000)
            break
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    return ChatRequest(model, messages, stream, bool(stream_options.get("include_usage")), max_tokens, options)


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", param=f"messages[{i}].role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text, and image_url for models that take images
            for j, part in enumerate(content):
                where = f"messages[{i}].content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    continue
                if kind == "image_url":
                    image = part.get("image_url")
                    url = image.get("url") if isinstance(image, dict) else image
                    if isinstance(url, str) and url:
                        continue
                    raise ApiError(400, f"{where}.image_url needs a 'url' string", param=where)
                raise ApiError(400, f"{where}: parts must be {{'type': 'text', 'text': ...}} or "
                                    f"{{'type': 'image_url', 'image_url': {{'url': ...}}}}", param=where)
            if all(part["type"] == "text" for part in content):
                content = "".join(part["text"] for part in content)
            else:
                out.append({"role": message["role"], "content": content})
                continue
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        out.append({"role": message["role"], "content": content})
    return out


def _number(body: dict, name: str, low: float, high: float) -> float:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be a number between {low:g} and {high:g}", param=name)
    return float(value)


def _integer(body: dict, name: str, low: int, high: int) -> int:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be an integer between {low} and {high}", param=name)
    return value
