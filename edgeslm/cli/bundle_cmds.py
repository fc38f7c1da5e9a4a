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
    from ..bundle.signatures import describe
    from ..bundle.summary import summarize

    with OpenedBundle(bundle) as opened:
        manifest = read_manifest(opened.folder)
        signatures = describe(opened.folder)
    if as_json:
        echo_json({**manifest.to_json(), "signatures": signatures})
    else:
        click.echo(summarize(manifest, human_bytes, signatures))


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--trusted-key", "trusted", multiple=True, type=click.Path(path_type=Path),
              help="Public key (or a folder of .pub files) whose signature is required; checked first.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify(bundle: Path, trusted: tuple[Path, ...], as_json: bool) -> None:
    """Recompute every checksum (after the signature, with --trusted-key); non-zero exit naming the failing
    part: no signature, unknown key, bad or stale signature, or a missing, extra, truncated or altered file."""
    from ..bundle.pack import OpenedBundle
    from ..bundle.signing_keys import load_public_keys
    from ..bundle.verify import verify_bundle
    from ..errors import VerificationError
    from .rich_progress import RichProgress

    keys = load_public_keys(list(trusted)) if trusted else None
    with OpenedBundle(bundle) as opened, RichProgress(quiet=as_json) as progress:
        with progress.task("Verifying checksums") as advance:
            report = verify_bundle(opened.folder, progress=advance, trusted=keys)
    signed_by = [f"{s.signer} ({s.key_id}) at {s.signed_at}" for s in report.signature.accepted] \
        if report.signature else []
    if as_json:
        echo_json({"bundle": str(bundle), "ok": report.ok, "files": report.checked_files,
                   "bytes": report.checked_bytes, "problems": [vars(p) for p in report.problems],
                   "signed_by": signed_by})
        if not report.ok:
            raise click.exceptions.Exit(VerificationError.exit_code)
        return
    for problem in report.problems:
        click.echo(f"  {problem}", err=True)
    report.raise_for_problems()
    signed = f"; signed by {', '.join(signed_by)}" if signed_by else ""
    click.echo(f"ok: {report.checked_files} files, {human_bytes(report.checked_bytes)} match the manifest{signed}")


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
