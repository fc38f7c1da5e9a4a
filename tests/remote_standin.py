"""A stand-in for a cloud chat-completions service, on 127.0.0.1 (no real cloud call in any test).

It checks what a preset must send, as the real service would: the path (404 otherwise), the key in
its header (401 otherwise, echoing what it got, as some services do: the client must redact it), the
query (Azure's ``api-version``) and the model id (404 for another). Then it follows the test's plan,
one action per request: an SSE stream, one JSON body, an error status, or a hang. Every request is
recorded (path, query, headers, JSON body) for the test to look at.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_PIECES = ("Hello", " from", " the", " stand-in", ".")


@dataclass(frozen=True)
class Seen:
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: dict[str, Any]


def sse(*pieces: str, finish: str = "stop", usage: tuple[int, int] | None = None, model: str = "") -> tuple:
    return ("sse", pieces, finish, usage, model)


def status(code: int, message: str = "", retry_after: str | None = None) -> tuple:
    return ("status", code, message, retry_after)


def completion(text: str, finish: str = "stop") -> tuple:
    return ("json", text, finish)


def hang(seconds: float, after: tuple[str, ...] = ()) -> tuple:
    """Send the ``after`` pieces (none: not even the status line), then nothing for ``seconds``."""
    return ("hang", seconds, after)


class StandIn:
    def __init__(self, path: str = "/v1/chat/completions", header: str = "authorization", value: str | None = None,
                 query: dict[str, str] | None = None, models: tuple[str, ...] = ()):
        self.expect_path, self.expect_header, self.expect_value = path, header, value
        self.expect_query, self.models = dict(query or {}), models
        self.plan: list[tuple] = []
        self.seen: list[Seen] = []
        self.released = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(handler.path)
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        body = json.loads(raw or b"{}")
        headers = {k.lower(): v for k, v in handler.headers.items()}
        self.seen.append(Seen(parts.path, dict(urllib.parse.parse_qsl(parts.query)), headers, body))
        if parts.path != self.expect_path:
            return _json(handler, 404, {"error": {"code": "not_found", "message": f"no route {parts.path}"}})
        got = headers.get(self.expect_header, "")
        if self.expect_value is not None and got != self.expect_value:
            return _json(handler, 401, {"error": {"code": "unauthorized", "message": f"Bad credentials: '{got}'"}})
        for key, value in self.expect_query.items():
            if dict(urllib.parse.parse_qsl(parts.query)).get(key) != value:
                return _json(handler, 400, {"error": {"message": f"missing query parameter {key}={value}"}})
        if self.models and body.get("model") not in self.models:
            return _json(handler, 404, {"error": {"code": "unknown_model", "message": f"Unknown model: {body.get('model')}"}})
        action = self.plan.pop(0) if self.plan else sse(*DEFAULT_PIECES)
        getattr(self, f"_{action[0]}")(handler, body, *action[1:])

    def _sse(self, handler, body, pieces, finish, usage, model) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        name = model or body.get("model", "")
        events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
        events += [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if usage:
            events.append({"choices": [], "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                                                    "total_tokens": sum(usage)}})
        for event in events:
            handler.wfile.write(f"data: {json.dumps({'model': name, 'object': 'chat.completion.chunk', **event})}\n\n"
                                .encode())
            handler.wfile.flush()
        handler.wfile.write(b"data: [DONE]\n\n")

    def _json(self, handler, body, text, finish) -> None:
        _json(handler, 200, {"object": "chat.completion", "model": body.get("model"),
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": finish}],
                             "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})

    def _status(self, handler, body, code, message, retry_after) -> None:
        extra = {"Retry-After": retry_after} if retry_after is not None else {}
        _json(handler, code, {"error": {"message": message or f"status {code}"}}, extra)

    def _hang(self, handler, body, seconds, after) -> None:
        if after:
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.end_headers()
            for piece in after:
                handler.wfile.write(f"data: {json.dumps({'choices': [{'delta': {'content': piece}}]})}\n\n".encode())
            handler.wfile.flush()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.released.wait(0.05):
            pass


def _json(handler: BaseHTTPRequestHandler, code: int, value: dict, headers: dict | None = None) -> None:
    data = json.dumps(value).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, header in (headers or {}).items():
        handler.send_header(name, header)
    handler.end_headers()
    handler.wfile.write(data)


def _handler(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                standin.answer(self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


KEY = "sk-edgeslm-test-7f3a9c1d5e2b"  # what every test greps the output, errors and logs for


def write_remote_toml(folder, **keys: Any):
    """``folder/remote.toml`` with ``keys`` (strings, numbers, booleans)."""
    lines = [f"{name} = {json.dumps(value)}" for name, value in keys.items()]
    path = folder / "remote.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def open_remote(config_path):
    """The remote fallback of a remote.toml, opened as the runtime does (through the registry)."""
    from edgeslm.backends.remote.settings import load_remote_config
    from edgeslm.runtime.remote_fallback import RemoteChoice

    return RemoteChoice(load_remote_config(config_path), allowed=True, local=None).open(None, None, None)
