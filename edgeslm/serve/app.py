"""The Starlette application: /health, /v1/models, /v1/chat/completions (JSON or server-sent events).

Generation is blocking, so it runs in a worker thread; text pieces cross to the event loop through
an asyncio queue. A client that disconnects sets a cancel flag the worker checks between tokens, which
closes the engine's generator and frees its KV cache at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import EdgeslmError, RemoteError
from ..runtime.generation import ContextLengthError
from .admission import Admission
from .request_schema import ApiError, ChatRequest, parse_chat_request


class ServerState:
    def __init__(self, llm: Any, model_id: str, api_key: str | None, max_queue: int, max_body_bytes: int,
                 default_max_tokens: int):
        self.llm, self.model_id, self.api_key = llm, model_id, api_key
        self.admission = Admission(max_queue)
        self.max_body_bytes = max_body_bytes
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())


def create_app(state: ServerState) -> Starlette:
    async def health(request: Request) -> Response:
        a = state.admission
        return JSONResponse({"status": "ok", "model": state.model_id, "active": a.active, "queued": a.waiting,
                             "served": a.served, "cancelled": a.cancelled, "rejected": a.rejected,
                             "artifact": state.llm.candidate.artifact.id, "device": state.llm.candidate.device})

    async def models(request: Request) -> Response:
        _authorize(request, state)
        return JSONResponse({"object": "list", "data": [
            {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "edgeslm"}]})

    async def chat_completions(request: Request) -> Response:
        _authorize(request, state)
        chat = parse_chat_request(await _read_body(request, state.max_body_bytes))
        if chat.model != state.model_id:
            raise ApiError(404, f"the model '{chat.model}' does not exist; this server has '{state.model_id}'",
                           param="model", code="model_not_found")
        started = await state.admission.acquire()
        try:
            cancel = threading.Event()
            stream = await asyncio.get_running_loop().run_in_executor(None, _open_stream, state, chat)
        except BaseException:
            state.admission.release(started, outcome="error")
            raise
        queue: asyncio.Queue = asyncio.Queue()
        worker = _start_worker(state, stream, cancel, started, queue)  # releases the slot when it ends
        answered = _answered_by(state, stream)
        if chat.stream:
            return EventStream(_sse(state, chat, queue, answered), on_close=lambda: worker.done() or cancel.set())
        return await _complete(request, state, queue, worker, cancel, answered)

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    return Starlette(routes=[Route("/health", health), Route("/v1/models", models),
                             Route("/v1/chat/completions", chat_completions, methods=["POST"])],
                     exception_handlers={ApiError: api_error})


def _authorize(request: Request, state: ServerState) -> None:
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    if header != f"Bearer {state.api_key}":
        raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                       type_="authentication_error", code="invalid_api_key")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is over the {limit}-byte limit", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body is over the {limit}-byte limit", code="body_too_large")
    return bytes(body)


def _open_stream(state: ServerState, chat: ChatRequest) -> Any:
    llm = state.llm
    try:
        prepared = llm.prepare(chat.messages)
        room = llm.context_tokens - len(prepared.ids)
        max_new = min(chat.max_tokens or state.default_max_tokens, max(room, 1))
        return llm.stream(chat.messages, prepared=prepared, max_new_tokens=max_new, **chat.options)
    except ContextLengthError as exc:
        raise ApiError(400, exc.message, param="messages", code="context_length_exceeded") from None
    except RemoteError as exc:  # the cloud fallback failed (its key never appears in the message)
        raise ApiError(502, exc.message, type_="server_error", code="remote_error") from None
    except EdgeslmError as exc:
        param = getattr(exc, "param", None)
        raise ApiError(400, exc.message, param=param, code="invalid_image" if param else None) from None


def _start_worker(state: ServerState, stream: Any, cancel: threading.Event, started: float,
                  queue: asyncio.Queue) -> asyncio.Future:
    """Run the generation in a thread; the engine slot is released when that thread is done, however the
    request ended (finished, client gone, task cancelled mid-cleanup)."""
    loop = asyncio.get_running_loop()
    worker = loop.run_in_executor(None, _pump, stream, cancel, loop, queue)

    def release(_: asyncio.Future) -> None:
        result = stream.result
        cancelled = cancel.is_set() and (result is None or result.finish_reason == "cancelled")
        state.admission.release(started, outcome="cancelled" if cancelled else "served")

    worker.add_done_callback(release)
    return worker


def _pump(stream: Any, cancel: threading.Event, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
    """Worker thread: move pieces to the event loop until done or cancelled."""
    try:
        for piece in stream:
            if cancel.is_set():
                break
            loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))
    except Exception as exc:  # reported to the client below
        loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
    finally:
        stream.close()
        loop.call_soon_threadsafe(queue.put_nowait, ("done", stream.result))


def _answered_by(state: ServerState, stream: Any) -> tuple[str, str]:
    """An answer's ``model`` and ``system_fingerprint``: the remote model for the cloud fallback (a
    ``RemoteStream``), else the bundle's model and the local artifact that answers."""
    if getattr(stream, "system_fingerprint", None):
        return stream.model, stream.system_fingerprint
    return state.model_id, f"edgeslm-local:{state.llm.candidate.artifact.id}"


async def _complete(request: Request, state: ServerState, queue: asyncio.Queue, worker: asyncio.Future,
                    cancel: threading.Event, answered: tuple[str, str]) -> Response:
    while not worker.done():
        done, _ = await asyncio.wait({worker}, timeout=0.25)
        if not done and await request.is_disconnected():
            cancel.set()
    pieces, result = [], None
    while not queue.empty():
        kind, value = queue.get_nowait()
        if kind == "piece":
            pieces.append(value)
        elif kind == "error":
            raise ApiError(500, f"generation failed: {value}", type_="server_error")
        else:
            result = value
    return JSONResponse({
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": answered[0], "system_fingerprint": answered[1],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "finish_reason": _finish(result.finish_reason)}],
        "usage": _usage(result)})


async def _sse(state: ServerState, chat: ChatRequest, queue: asyncio.Queue,
               answered: tuple[str, str]) -> AsyncIterator[str]:
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body: dict[str, Any] = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                                "model": answered[0], "system_fingerprint": answered[1],
                                "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    while True:
        kind, value = await queue.get()
        if kind == "piece":
            yield chunk({"content": value})
        elif kind == "error":
            yield f"data: {json.dumps(ApiError(500, f'generation failed: {value}', 'server_error').body())}\n\n"
        else:
            yield chunk({}, _finish(value.finish_reason))
            if chat.include_usage:
                yield chunk({}, usage=_usage(value))
            yield "data: [DONE]\n\n"
            return


class EventStream:
    """A server-sent-events response that notices a client disconnect at once.

    It listens for ``http.disconnect`` while sending; when the client goes away the sending task is
    cancelled, which runs the event generator's cleanup (cancel the generation, free the engine).
    """

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], object]):
        self.events, self.on_close = events, on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]})
            await self._stream(receive, send)
        finally:
            self.on_close()  # stops the generation if it still runs (client gone)
            await self.events.aclose()

    async def _stream(self, receive: Any, send: Any) -> None:

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        async def emit() -> None:
            async for event in self.events:
                await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        listener, emitter = asyncio.ensure_future(listen()), asyncio.ensure_future(emit())
        try:
            await asyncio.wait({listener, emitter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (listener, emitter):
                task.cancel()
            await asyncio.gather(listener, emitter, return_exceptions=True)


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(result: Any) -> dict[str, int]:
    return {"prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens,
            "total_tokens": result.usage.total_tokens}
