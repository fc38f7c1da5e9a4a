"""Device side of the ``remote`` backend: a chat-completions service instead of a local artifact.

Opened like every engine, through ``Backend.open_engine()`` with the same signature; ``artifact_dir`` is
None (nothing of the bundle runs) and the candidate carries the ``remote.toml`` it was chosen by. A
remote service takes messages, not token ids, so this engine has one generation call,
``start(messages, options, max_new_tokens, images)``, answered by a :class:`Reply` of text pieces; the
runtime's ``RemoteLLM`` puts it behind the API of a loaded bundle (``prepare``/``stream``/``chat``).
Image prompts go to the vision model, text prompts to the text model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import BackendMissingError
from ...runtime.generation import GenerationOptions
from .presets import Endpoint, resolve_endpoint
from .settings import RemoteSettings


class RemoteEngine:
    def __init__(self, endpoint: Endpoint, settings: RemoteSettings, client: Any):
        self.endpoint, self.settings, self._client = endpoint, settings, client

    @property
    def name(self) -> str:
        return self.endpoint.preset

    @property
    def takes_images(self) -> bool:
        return bool(self.endpoint.vision_model)

    @property
    def context_tokens(self) -> int:
        return self.settings.context_tokens

    def model_for(self, images: bool) -> str:
        return self.endpoint.vision_model if images else self.endpoint.model

    def request_body(self, messages: list[dict[str, Any]], options: GenerationOptions, max_new_tokens: int,
                     images: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model_for(images), "messages": messages, "stream": True,
                                "max_tokens": max_new_tokens, "temperature": options.temperature,
                                "top_p": options.top_p}
        if options.stop:
            body["stop"] = list(options.stop[:4])  # the API's limit; the runtime also cuts at every stop string
        if options.seed is not None:
            body["seed"] = options.seed
        if self.endpoint.stream_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    def start(self, messages: list[dict[str, Any]], options: GenerationOptions, max_new_tokens: int,
              images: bool = False) -> Any:
        """Send the request (with its retries) and return the accepted answer, a ``reply_stream.Reply``."""
        return self._client.open(self.request_body(messages, options, max_new_tokens, images))

    def redact(self, text: str) -> str:
        return self._client.redact(text)

    def close(self) -> None:
        self._client.close()


def open_engine(artifact_dir: Path | None, candidate: Any, host: Any, manifest: Any,
                threads: int | None = None) -> RemoteEngine:
    try:
        from .client import ChatClient, read_key
    except ImportError:
        raise BackendMissingError("the remote fallback needs httpx", hint="pip install 'edgeslm[remote]'") from None
    config = candidate.config
    where = str(config.path)
    endpoint = resolve_endpoint(config.settings, where)
    return RemoteEngine(endpoint, config.settings, ChatClient(endpoint, config.settings, read_key(endpoint, where),
                                                              where))
