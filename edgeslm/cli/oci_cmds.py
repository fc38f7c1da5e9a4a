"""``edgeslm push``, ``pull`` and ``update``: bundles through an OCI registry (docs/oci.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .output import human_bytes

plain_http_option = click.option("--plain-http", is_flag=True,
                                 help="Talk HTTP instead of HTTPS (a local registry only).")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("reference", metavar="oci://HOST[:PORT]/REPO:TAG")
@plain_http_option
@click.option("--json", "as_json", is_flag=True)
def push(bundle: Path, reference: str, plain_http: bool, as_json: bool) -> None:
    """Push BUNDLE to a registry: one blob per file, only the blobs the registry does not have yet."""
    from ..oci.push import push_bundle
    from .rich_progress import RichProgress

    with RichProgress(quiet=as_json) as progress:
        report = push_bundle(bundle, reference, plain_http, progress)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    click.echo(f"pushed {report.bundle_id} to {report.reference}@{report.digest}: uploaded {report.uploaded_files} "
               f"file(s), {human_bytes(report.uploaded_bytes)}; {report.skipped_files} already there "
               f"({human_bytes(report.skipped_bytes)}){'; signed' if report.signed else ''}")


def _echo_pull(report, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    if report.action in ("up-to-date", "already-active"):
        click.echo(f"{report.action}: {report.version} in {report.out} ({report.reference}@{report.digest})")
        return
    click.echo(f"{report.action}: {report.version} from {report.reference}@{report.digest} into {report.out}: "
               f"downloaded {report.downloaded_files} file(s), {human_bytes(report.downloaded_bytes)} (resumed "
               f"{report.resumed_files}, reused {report.reused_files}, kept {report.kept_files})")
    if report.signed_by:
        click.echo(f"trusted signature: {', '.join(report.signed_by)}")


@click.command()
@click.argument("reference", metavar="oci://HOST[:PORT]/REPO[:TAG][@sha256:…]")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None, help="Bundle folder to write.")
@click.option("--install", "install", type=click.Path(path_type=Path), default=None,
              help="Install on this device instead: stage in DEST, verify, switch DEST/current atomically.")
@click.option("--target", default=None, help="Pull only the artifacts this target needs.")
@click.option("--trusted-key", "trusted", multiple=True, type=click.Path(path_type=Path),
              help="Require a signature by this public key (or folder of .pub files); --install uses DEST/trust/.")
@click.option("--limit-rate", default=None, help="Bandwidth cap, bytes/s (e.g. 5M).")
@click.option("--force", is_flag=True, help="Replace an existing --out folder once the pull is complete.")
@plain_http_option
@click.option("--json", "as_json", is_flag=True)
def pull(reference, out, install, target, trusted, limit_rate, force, plain_http, as_json) -> None:
    """Pull a bundle from a registry: every blob checked by digest, resumable, unchanged files reused."""
    from ..errors import UsageError
    from .rich_progress import RichProgress

    if (out is None) == (install is None):
        raise UsageError("give one of --out DIR or --install DEST")
    with RichProgress(quiet=as_json) as progress:
        if install is not None:
            from ..oci.install import install_from_oci

            if trusted:
                raise UsageError("--install checks the device's own trust policy (DEST/trust/); install one with "
                                 "edgeslm flash --trust, not --trusted-key")
            report = install_from_oci(reference, install, target, plain_http, limit_rate, progress=progress)
        else:
            from ..bundle.signing_keys import load_public_keys
            from ..oci.pull import pull_bundle

            keys = load_public_keys(list(trusted)) if trusted else None
            report = pull_bundle(reference, out, target, plain_http, keys, limit_rate, force, progress)
    _echo_pull(report, as_json)


@click.command()
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--follow", default=None, metavar="oci://HOST/REPO:TAG",
              help="The tag to follow [default: what DEST was installed from].")
@click.option("--target", default=None, help="Install only this target's artifacts [default: as installed].")
@click.option("--limit-rate", default=None, help="Bandwidth cap, bytes/s (e.g. 5M).")
@click.option("--plain-http/--https", "plain_http", default=None, help="[default: as installed].")
@click.option("--json", "as_json", is_flag=True)
def update(dest, follow, target, limit_rate, plain_http, as_json) -> None:
    """Check the followed tag; install (stage, verify, switch) only when it moved."""
    from ..oci.install import update_from_oci
    from .rich_progress import RichProgress

    with RichProgress(quiet=as_json) as progress:
        report = update_from_oci(dest, follow, target, plain_http, limit_rate, progress=progress)
    _echo_pull(report, as_json)
