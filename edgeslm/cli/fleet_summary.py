"""The per-host summary table printed after a fleet flash."""

from __future__ import annotations

import json

import click

from .option_flags import flag


def _error(result) -> str:
    return result.failure.one_line(flag) if result.failure else result.error


def print_fleet_summary(results, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([{"name": r.name, "dest": r.dest, "ok": r.ok, "error": _error(r),
                                "report": r.report.to_json() if r.report else None} for r in results], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="edgeslm flash: fleet summary")
    for column in ("host", "destination", "result", "sent", "details"):
        table.add_column(column)
    for r in results:
        if r.ok:
            rep = r.report
            table.add_row(r.name, r.dest, f"[green]{rep.action}[/green]", f"{rep.sent_bytes / 2**20:,.1f} MiB",
                          f"{rep.verified_files} files verified")
        else:
            table.add_row(r.name, r.dest, "[red]failed[/red]", "-", _error(r))
    Console().print(table)
    failed = sum(not r.ok for r in results)
    click.echo(f"{len(results) - failed} of {len(results)} hosts succeeded")
