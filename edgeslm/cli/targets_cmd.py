"""``edgeslm targets``."""

from __future__ import annotations

import click

from .output import echo_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the targets as JSON.")
def targets(as_json: bool) -> None:
    """List the device targets and the artifact formats each accepts (best first)."""
    from ..config.strict import to_plain
    from ..config.targets import all_targets

    found = all_targets()
    if as_json:
        echo_json([{k: v for k, v in to_plain(t).items() if k != "source_file"} for t in found.values()])
        return
    for t in found.values():
        formats = ", ".join(t.formats)
        aliases = f" (also: {', '.join(t.aliases)})" if t.aliases else ""
        click.echo(f"{t.name}{aliases}")
        click.echo(f"    {t.description}")
        click.echo(f"    {t.cpu_arch}, RAM {'/'.join(map(str, t.ram_gb))} GB, formats: {formats}")
