"""``edgeslm serve``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .device_options import apply, echo_remote, echo_trust, remote_options, selection_options


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 for every interface).")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--api-key", default=None, envvar="EDGESLM_API_KEY",
              help="Require 'Authorization: Bearer KEY' (or set EDGESLM_API_KEY).")
@click.option("--max-queue", type=int, default=8, show_default=True,
              help="Requests that may wait while one generates; more get 429.")
@click.option("--max-body-bytes", type=int, default=None,
              help="Largest request body [default: 1 MiB; 20 MiB for a bundle that takes images].")
@click.option("--allow-remote-images", is_flag=True,
              help="Fetch http(s) image URLs (off by default: only data: URLs are read; no server-side fetching).")
@click.option("--default-max-tokens", type=int, default=1024, show_default=True,
              help="Answer length when a request sets no max_tokens.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads [default: the host's physical cores].")
@apply(selection_options)
@apply(remote_options)
def serve(bundle, host, port, api_key, max_queue, max_body_bytes, allow_remote_images, default_max_tokens, log_level,
          threads, artifact, device, context, allow_remote, remote_config) -> None:
    """Serve BUNDLE with an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health)."""
    from ..serve.run_server import ServeOptions, serve_bundle

    def ready(url: str, llm) -> None:
        echo_trust(llm)
        echo_remote(llm)
        click.echo(f"edgeslm serve: {llm.candidate.summary}", err=True)
        click.echo(f"edgeslm serve: model '{llm.manifest.model.name}' on {url}/v1 (pid {os.getpid()})", err=True)

    serve_bundle(bundle, ServeOptions(host, port, api_key, max_queue, max_body_bytes, default_max_tokens, log_level,
                                      artifact, device, context, threads, allow_remote_images,
                                      allow_remote=allow_remote, remote_config=remote_config), on_ready=ready)
