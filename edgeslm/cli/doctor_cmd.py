"""``edgeslm doctor``: the host profile and, for a bundle, which artifact runs here and why."""

from __future__ import annotations

from pathlib import Path

import click

from .device_options import apply, selection_options
from .output import echo_json, human_bytes


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@apply(selection_options)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(bundle, artifact, device, context, as_json) -> None:
    """Show this host's profile and, per artifact of BUNDLE, chosen or rejected and why."""
    from ..errors import NoArtifactError
    from ..runtime.doctor_report import doctor_report, format_report

    report = doctor_report(bundle, artifact=artifact, device=device, context=context)
    if as_json:
        echo_json(report)
    else:
        click.echo(format_report(report, human_bytes))
    if bundle is not None and report["chosen"] is None:
        raise click.exceptions.Exit(NoArtifactError.exit_code)
