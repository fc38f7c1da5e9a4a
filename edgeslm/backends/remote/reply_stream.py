"""One answer of a chat-completions service, read as it arrives: server-sent events, or one JSON body.

Streaming answers are ``data: {chunk}`` events (``choices[0].delta.content`` pieces, a ``finish_reason``
in the last choice, ``usage`` in a final chunk when asked for) ended by ``data: [DONE]``; a service
that ignores ``stream`` answers one ``chat.completion`` object, which is read the same way. An error
event, a cut connection or a silence longer than the read timeout becomes a :class:`RemoteError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from ...errors import RemoteError


class Reply:
    """Iterate ``pieces()`` for the text; ``finish_reason``, ``usage`` and ``model`` are set as they arrive."""

    def __init__(self, response: httpx.Response, name: str, timeout_s: float, redact: Callable[[str], str]):
        self._response = response
        self._name, self._timeout_s, self._redact = name, timeout_s, redact
        self.finish_reason: str | None = None
        self.usage: tuple[int, int] | None = None  # (prompt_tokens, completion_tokens) when the service says
        self.model = ""

    def pieces(self) -> Iterator[str]:
        try:
            if "text/event-stream" in self._response.headers.get("content-type", ""):
                yield from self._events()
            else:
                yield from self._completion(self._response.read())
        except httpx.TimeoutException:
            raise RemoteError(f"{self._name} stopped answering (nothing for {self._timeout_s:g} s)",
                              hint="raise timeout_s in remote.toml for slow answers") from None
        except httpx.HTTPError as exc:
            raise RemoteError(f"{self._name}: the connection broke mid-answer ({self._redact(_one_line(exc))})") from None
        finally:
            self.close()

    def close(self) -> None:
        self._response.close()

    def _events(self) -> Iterator[str]:
        data: list[str] = []
        for line in self._response.iter_lines():
            if line:
                field, _, value = line.partition(":")
                if field == "data":
                    data.append(value[1:] if value.startswith(" ") else value)
                continue  # comments (":"), event names, ids
            if data:
                done = yield from self._event("\n".join(data))
                data = []
                if done:
                    return
        if data:
            yield from self._event("\n".join(data))

    def _event(self, data: str) -> Iterator[str]:
        if data.strip() == "[DONE]":
            return True
        chunk = self._json(data)
        if chunk.get("error"):
            raise RemoteError(f"{self._name} reported an error mid-answer: {self._message(chunk)}")
        self._note(chunk)
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
            if isinstance(content, str) and content:
                yield content
        return False

    def _completion(self, body: bytes) -> Iterator[str]:
        completion = self._json(body.decode("utf-8", "replace"))
        self._note(completion)
        choices = completion.get("choices") or [{}]
        content = ((choices[0] or {}).get("message") or {}).get("content")
        if isinstance(content, str) and content:
            yield content

    def _note(self, chunk: dict[str, Any]) -> None:
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage = (int(usage.get("prompt_tokens") or 0), usage["completion_tokens"])

    def _json(self, text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise RemoteError(f"{self._name} answered something that is not a chat completion: "
                              f"{self._redact(_one_line(text))[:200]!r}")
        return value

    def _message(self, body: dict[str, Any]) -> str:
        return self._redact(error_message(body))


def error_message(body: Any) -> str:
    """The human part of an error body: OpenAI's ``{"error": {"message"}}``, or its common variants."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            for key in ("message", "detail", "msg"):
                if isinstance(error.get(key), str):
                    return _one_line(error[key])[:300]
        if isinstance(error, str):
            return _one_line(error)[:300]
    return _one_line(json.dumps(body))[:300]


def _one_line(value: object) -> str:
    return " ".join(str(value).split())
