"""The remote fallback behind the API of a loaded bundle, and the router that uses it for image prompts.

``RemoteLLM`` answers every prompt with the remote engine when no local artifact can run here;
``RoutedLLM`` keeps a local text-only artifact for text and sends only prompts with images to the
remote's vision model. Both have what callers of ``LLM`` use (``prepare``, ``stream``, ``chat``,
``candidate``, ``context_tokens``, ``takes_images``, ``close``), so ``edgeslm run/chat/serve`` and
``edgeslm.load`` drive them unchanged. Every answer says who gave it: ``GenerationResult.device`` is
``remote``, ``artifact_id`` ``remote:<preset>`` and ``model`` the remote model id.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..backends.remote.image_parts import has_images, remote_messages
from ..errors import RemoteInputError
from .generation import GenerationOptions, GenerationResult, Usage
from .loaded_model import Stream
from .stop_text import StopScanner


@dataclass(frozen=True)
class RemoteTarget:
    """Stands where a local candidate's artifact does (``candidate.artifact.id`` in /health, bench, JSON)."""

    id: str
    vision: Any = None


@dataclass(frozen=True)
class RemoteCandidate:
    config: Any  # backends.remote.settings.RemoteConfig
    endpoint: Any  # backends.remote.presets.Endpoint
    reason: str
    device: str = "remote"
    accelerator: Any = None

    @property
    def artifact(self) -> RemoteTarget:
        return RemoteTarget(f"remote:{self.endpoint.preset}")

    @property
    def summary(self) -> str:
        vision = f", images to {self.endpoint.vision_model}" if self.endpoint.vision_model else ""
        return (f"remote fallback {self.endpoint.preset}: {self.endpoint.model} at {self.endpoint.host}{vision} "
                f"({self.reason})")


@dataclass(frozen=True)
class RemotePrompt:
    messages: list[dict[str, Any]]  # images as data URLs
    images: bool

    @property
    def ids(self) -> list[int]:  # no local tokens: the service counts them
        return []


class RemoteStream(Stream):
    """Text pieces of one remote answer; ``model`` and ``system_fingerprint`` say who answers."""

    def __init__(self, reply: Any, options: GenerationOptions, model: str, artifact_id: str, started: float):
        super().__init__(iter(()))
        self.reply, self.model = reply, model
        self.system_fingerprint = f"edgeslm-{artifact_id}"
        self._pieces = self._run(options, artifact_id, started)

    def close(self) -> None:
        super().close()
        self.reply.close()  # also when iteration never started

    def _run(self, options: GenerationOptions, artifact_id: str, started: float) -> Iterator[str]:
        scanner, texts = StopScanner(options.stop), []
        count, finish = 0, "stop"
        first = last = None
        try:
            for text in self.reply.pieces():
                last = time.perf_counter()
                first = first or last
                count += 1
                piece = scanner.feed(text)
                if piece:
                    texts.append(piece)
                    yield piece
                if scanner.stopped:
                    break
            else:
                tail = scanner.flush()
                if tail:
                    texts.append(tail)
                    yield tail
                finish = "length" if self.reply.finish_reason == "length" else "stop"
        except GeneratorExit:
            finish = "cancelled"
            raise
        finally:
            self.reply.close()
            prompt_tokens, completion = self.reply.usage or (0, count)
            first, last = first or time.perf_counter(), last or time.perf_counter()
            self.result = GenerationResult(
                text="".join(texts), finish_reason=finish, usage=Usage(prompt_tokens, completion),
                time_to_first_token_s=first - started,
                decode_tokens_per_s=(completion - 1) / (last - first) if completion > 1 and last > first else 0.0,
                total_s=time.perf_counter() - started, artifact_id=artifact_id, device="remote",
                model=self.reply.model or self.model)


class RemoteLLM:
    def __init__(self, engine: Any, manifest: Any, selection: Any, candidate: RemoteCandidate):
        self.engine, self.manifest, self.selection, self.candidate = engine, manifest, selection, candidate
        self.allow_remote_images = False  # http(s) image URLs are never passed on (data: URLs only)
        self.allow_image_files = True  # local paths / file:// URLs, read here and sent as data URLs
        self.num_crops: int | None = None  # the service cuts images itself
        self.remote_note = f"answering with the {candidate.summary}"
        self.context_tokens: int = engine.context_tokens  # what the remote model takes (kept after close)
        self.max_prompt_tokens = self.context_tokens - 1
        self.takes_images: bool = engine.takes_images

    def prepare(self, messages: list[dict[str, Any]], system: str | None = None) -> RemotePrompt:
        images = has_images(messages)
        if images and not self.engine.takes_images:
            raise RemoteInputError(f"the remote fallback {self.engine.name} has no vision model for this image prompt",
                                   hint="set vision_model (and images = true) in remote.toml, or send text only",
                                   param="messages")
        return RemotePrompt(remote_messages(messages, system, self.allow_image_files), images)

    def stream(self, messages: list[dict[str, Any]], system: str | None = None,
               prepared: RemotePrompt | None = None, **options: Any) -> RemoteStream:
        opts = GenerationOptions(**{**options, "stop": tuple(options.get("stop") or ())})
        prepared = prepared or self.prepare(messages, system)
        started = time.perf_counter()
        reply = self.engine.start(prepared.messages, opts, opts.max_new_tokens, prepared.images)
        return RemoteStream(reply, opts, self.engine.model_for(prepared.images), self.candidate.artifact.id, started)

    def chat(self, messages: list[dict[str, Any]], system: str | None = None, **options: Any) -> GenerationResult:
        return _finish(self.stream(messages, system, **options))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def __enter__(self) -> RemoteLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RoutedLLM:
    """A local artifact that is text-only, and the remote fallback for the prompts with images."""

    def __init__(self, local: Any, candidate: RemoteCandidate, open_remote: Callable[[], RemoteLLM]):
        self.local, self._open_remote, self._remote = local, open_remote, None
        self.remote_note = (f"image prompts go to the {candidate.summary}; {local.candidate.artifact.id} "
                            "answers the rest here")

    def __getattr__(self, name: str) -> Any:  # manifest, selection, candidate, context_tokens, engine, ...
        return getattr(self.__dict__["local"], name)

    @property
    def remote(self) -> RemoteLLM:
        """Opened at the first image prompt: a missing key never stops the local artifact's answers."""
        if self._remote is None:
            self._remote = self._open_remote()
            self._remote.allow_image_files = self.local.allow_image_files
        return self._remote

    @property
    def takes_images(self) -> bool:
        return True

    @property
    def allow_image_files(self) -> bool:
        return self.local.allow_image_files

    @allow_image_files.setter
    def allow_image_files(self, value: bool) -> None:
        self.local.allow_image_files = value
        if self._remote is not None:
            self._remote.allow_image_files = value

    @property
    def allow_remote_images(self) -> bool:
        return self.local.allow_remote_images

    @allow_remote_images.setter
    def allow_remote_images(self, value: bool) -> None:
        self.local.allow_remote_images = value  # the remote never gets URLs

    def prepare(self, messages: list[dict[str, Any]], system: str | None = None) -> Any:
        return (self.remote if has_images(messages) else self.local).prepare(messages, system)

    def stream(self, messages: list[dict[str, Any]], system: str | None = None, prepared: Any = None,
               **options: Any) -> Stream:
        remote = isinstance(prepared, RemotePrompt) if prepared is not None else has_images(messages)
        return (self.remote if remote else self.local).stream(messages, system, prepared=prepared, **options)

    def chat(self, messages: list[dict[str, Any]], system: str | None = None, **options: Any) -> GenerationResult:
        return _finish(self.stream(messages, system, **options))

    def close(self) -> None:
        try:
            self.local.close()
        finally:
            if self._remote is not None:
                self._remote.close()

    def __enter__(self) -> RoutedLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finish(stream: Stream) -> GenerationResult:
    for _ in stream:
        pass
    assert stream.result is not None
    return stream.result
