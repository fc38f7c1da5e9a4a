"""Load a bundle and serve it with uvicorn until interrupted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendMissingError, UsageError


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_queue: int = 8
    max_body_bytes: int | None = None  # None: 1 MiB, or 20 MiB for a bundle that takes images
    default_max_tokens: int = 1024
    log_level: str = "warning"
    artifact: str | None = None
    device: str | None = None
    context: int | None = None
    threads: int | None = None
    allow_remote_images: bool = False  # fetch http(s) image URLs; off: only data: URLs
    allow_remote: bool = False  # the cloud fallback of remote.toml may answer (docs/remote.md)
    remote_config: Path | None = None  # that remote.toml [default: beside the bundle, else the user config folder]


def serve_bundle(bundle: Path, options: ServeOptions, on_ready: Callable[[str, object], None] | None = None) -> None:
    try:
        import uvicorn

        from .app import ServerState, create_app
    except ImportError:
        raise BackendMissingError("serving needs starlette and uvicorn", hint="pip install 'edgeslm[serve]'") from None
    if not 0 <= options.port <= 65535:
        raise UsageError(f"port {options.port} is out of range")
    if options.max_body_bytes is not None and options.max_body_bytes < 1024:
        raise UsageError("[[max_body_bytes]] must be at least 1024")
    if options.max_queue < 0:
        raise UsageError("[[max_queue]] must be 0 or more")
    from ..runtime.loaded_model import load

    with load(bundle, artifact=options.artifact, device=options.device, context=options.context,
              threads=options.threads, allow_remote=options.allow_remote, remote_config=options.remote_config) as llm:
        llm.allow_image_files = False  # a client never names files on the server
        llm.allow_remote_images = options.allow_remote_images
        body_limit = options.max_body_bytes or ((20 << 20) if llm.takes_images else (1 << 20))
        state = ServerState(llm, llm.manifest.model.name, options.api_key, options.max_queue, body_limit,
                            options.default_max_tokens)
        config = uvicorn.Config(create_app(state), host=options.host, port=options.port,
                                log_level=options.log_level, timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        if on_ready:
            on_ready(f"http://{options.host}:{options.port}", llm)
        server.run()
