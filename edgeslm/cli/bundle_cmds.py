"""``edgeslm inspect``, ``verify`` and ``pack``: commands on an existing bundle."""

from __future__ import annotations

from pathlib import Path

import click

from .output import echo_json, human_bytes


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(bundle: Path, as_json: bool) -> None:
    """Summarize a bundle folder or .tar: model, artifacts, targets, provenance."""
    from ..bundle.manifest import read_manifest
    from ..bundle.pack import OpenedBundle
    from ..bundle.summary import summarize

    with OpenedBundle(bundle) as opened:
        manifest = read_manifest(opened.folder)
    if as_json:
        echo_json(manifest.to_json())
    else:
        click.echo(summarize(manifest, human_bytes))


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(bundle: Path, as_json: bool) -> None:
    """Recompute every checksum; non-zero exit naming any missing, extra, truncated or altered file."""
    from ..bundle.pack import OpenedBundle
    from ..bundle.verify import verify_bundle
    from ..errors import VerificationError
    from .rich_progress import RichProgress

    with OpenedBundle(bundle) as opened, RichProgress(quiet=as_json) as progress:
        with progress.task("Verifying checksums") as advance:
            report = verify_bundle(opened.folder, progress=advance)
    if as_json:
        echo_json({"bundle": str(bundle), "ok": report.ok, "files": report.checked_files,
                   "bytes": report.checked_bytes, "problems": [vars(p) for p in report.problems]})
        if not report.ok:
            raise click.exceptions.Exit(VerificationError.exit_code)
        return
    for problem in report.problems:
        click.echo(f"  {problem}", err=True)
    report.raise_for_problems()
    click.echo(f"ok: {report.checked_files} files, {human_bytes(report.checked_bytes)} match the manifest")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None, help="Archive path [default: BUNDLE.tar].")
@click.option("--force", is_flag=True, help="Replace an existing archive.")
def pack(bundle: Path, out: Path | None, force: bool) -> None:
    """Pack a verified bundle folder into one .tar file."""
    from ..bundle.pack import pack_bundle
    from ..bundle.verify import verify_bundle

    verify_bundle(bundle).raise_for_problems()
    click.echo(str(pack_bundle(bundle, out, force)))
