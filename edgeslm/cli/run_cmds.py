"""``edgeslm run`` (one prompt) and ``edgeslm chat`` (interactive)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .device_options import (
    apply,
    echo_remote,
    echo_trust,
    generation_kwargs,
    generation_options,
    remote_options,
    selection_options,
)


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("prompt")
@apply(selection_options)
@apply(generation_options)
@apply(remote_options)
@click.option("--image", "images", multiple=True, metavar="PATH",
              help="An image for a vision bundle (repeat for several; they come before the prompt).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming text.")
def run(bundle, prompt, artifact, device, context, max_new_tokens, temperature, top_p, top_k, seed, system,
        verify_mode, threads, images, as_json, allow_remote, remote_config) -> None:
    """Answer PROMPT with the artifact that matches this host, streaming to stdout."""
    from ..runtime.loaded_model import load
    from ..runtime.message_parts import user_message

    gen = generation_kwargs(max_new_tokens, temperature, top_p, top_k, seed)
    with load(bundle, artifact=artifact, device=device, context=context, verify=verify_mode,
              threads=threads, allow_remote=allow_remote, remote_config=remote_config) as llm:
        echo_trust(llm)
        stream = llm.stream([user_message(prompt, images)], system=system, **gen)
        for piece in stream:
            if not as_json:
                sys.stdout.write(piece)
                sys.stdout.flush()
        result = stream.result
    if result.device == "remote":  # never silently
        click.echo(f"edgeslm: notice: answered by the remote fallback {result.artifact_id} ({result.model})", err=True)
    if as_json:
        click.echo(json.dumps({
            "text": result.text, "finish_reason": result.finish_reason,
            "prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens,
            "time_to_first_token_s": round(result.time_to_first_token_s, 4),
            "tokens_per_s": round(result.decode_tokens_per_s, 2), "total_s": round(result.total_s, 3),
            "artifact": result.artifact_id, "device": result.device,
            "engine": "remote" if result.device == "remote" else "local",
            "model": result.model or llm.manifest.model.name,
            "context_tokens": llm.context_tokens, "signed_by": llm.trust.signed_by if llm.trust else []}))
    else:
        sys.stdout.write("\n")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@apply(selection_options)
@apply(generation_options)
@apply(remote_options)
def chat(bundle, artifact, device, context, max_new_tokens, temperature, top_p, top_k, seed, system,
         verify_mode, threads, allow_remote, remote_config) -> None:
    """Chat interactively (multi-turn). Commands: /image PATH adds an image to your next message (vision
    bundles), /reset clears the history, /exit or Ctrl-D quits."""
    from ..runtime.chat_session import run_chat
    from ..runtime.loaded_model import load
    from .option_flags import flag

    gen = generation_kwargs(max_new_tokens, temperature, top_p, top_k, seed)
    with load(bundle, artifact=artifact, device=device, context=context, verify=verify_mode,
              threads=threads, allow_remote=allow_remote, remote_config=remote_config) as llm:
        echo_trust(llm)
        echo_remote(llm)
        images = " /image PATH adds an image," if llm.takes_images else ""
        click.echo(f"edgeslm chat: {llm.candidate.summary}.{images} /reset clears, /exit quits.", err=True)
        run_chat(llm, sys.stdin, sys.stdout, system=system, interactive=sys.stdin.isatty(), spell=flag, **gen)
