"""Options shared by the device-side commands (run, chat, doctor, serve)."""

from __future__ import annotations

from pathlib import Path

import click

selection_options = [
    click.option("--artifact", default=None, help="Use this artifact id instead of the automatic choice."),
    click.option("--device", type=click.Choice(["cpu", "gpu", "npu"]), default=None,
                 help="Only consider artifacts that run on this kind of device."),
    click.option("--context", type=int, default=None,
                 help="Total context tokens (prompt + output) [default: from the manifest and the free RAM]."),
]

remote_options = [
    click.option("--allow-remote", is_flag=True,
                 help="Let the cloud fallback named in remote.toml answer when no local artifact can "
                      "(or image prompts for a text-only one). Off unless remote.toml says allow = true."),
    click.option("--remote-config", type=click.Path(path_type=Path, dir_okay=False), default=None,
                 envvar="EDGESLM_REMOTE_CONFIG",
                 help="The remote.toml to use [default: beside the bundle, else the user config folder]."),
]

generation_options = [
    click.option("--max-new-tokens", "-n", type=int, default=256, show_default=True),
    click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy."),
    click.option("--top-p", type=float, default=1.0, show_default=True),
    click.option("--top-k", type=int, default=0, show_default=True, help="0 = no limit."),
    click.option("--seed", type=int, default=None, help="Seed for sampling (reproducible output)."),
    click.option("--system", default=None, help="System prompt."),
    click.option("--verify", "verify_mode", type=click.Choice(["fast", "full", "off"]), default="fast",
                 show_default=True, help="Checksum the artifact before loading (fast: re-hash changed files only)."),
    click.option("--threads", type=int, default=None, help="CPU threads [default: the host's physical cores]."),
]


def apply(options):
    def decorator(func):
        for option in reversed(options):
            func = option(func)
        return func
    return decorator


def generation_kwargs(max_new_tokens, temperature, top_p, top_k, seed) -> dict:
    return {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k,
            "seed": seed}


def echo_remote(llm) -> None:
    """When the cloud fallback answers (everything, or image prompts), one stderr line says so: never silently."""
    note = getattr(llm, "remote_note", "")
    if note:
        click.echo(f"edgeslm: notice: {note}", err=True)


def echo_trust(llm) -> None:
    """The trust notice (an unsigned bundle on a device without a policy) as one stderr line."""
    trust = getattr(llm, "trust", None)
    if trust is not None and trust.notice:
        click.echo(f"edgeslm: notice: {trust.notice}", err=True)
