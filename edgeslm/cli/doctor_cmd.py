"""``edgeslm doctor``: the host profile and, for a bundle, which artifact runs here and why."""

from __future__ import annotations

from pathlib import Path

import click

from .device_options import apply, remote_options, selection_options
from .output import echo_json, human_bytes


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path), required=False)
@apply(selection_options)
@apply(remote_options)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(bundle, artifact, device, context, allow_remote, remote_config, as_json) -> None:
    """Show this host's profile and, per artifact of BUNDLE, chosen or rejected and why."""
    from ..errors import OPTION, NoArtifactError
    from ..runtime.doctor_report import doctor_report, format_report
    from .option_flags import flag

    report = doctor_report(bundle, artifact=artifact, device=device, context=context, allow_remote=allow_remote,
                           remote_config=remote_config)
    if report.get("remote"):  # the library names options [[like_this]]; shown as the flags
        report["remote"]["reason"] = OPTION.sub(lambda m: flag(m.group(1)), report["remote"]["reason"])
    if as_json:
        echo_json(report)
    else:
        click.echo(format_report(report, human_bytes))
    remote_answers = (report.get("remote") or {}).get("status") == "used"
    if bundle is not None and report["chosen"] is None and not remote_answers:
        raise click.exceptions.Exit(NoArtifactError.exit_code)
