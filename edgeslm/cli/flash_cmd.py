"""``edgeslm flash``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .output import human_bytes


@click.command()
@click.argument("bundle", required=False, metavar="BUNDLE|oci://HOST/REPO:TAG")
@click.option("--to", "dest", default=None, help="ssh://user@host[:port]/path, adb://[SERIAL]/path, or a folder.")
@click.option("--inventory", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="TOML file of hosts to flash in parallel.")
@click.option("--target", default=None, help="Copy only the artifacts this target needs.")
@click.option("--identity", "-i", type=click.Path(path_type=Path), default=None, help="SSH private key.")
@click.option("--known-hosts", type=click.Path(path_type=Path), default=None, help="known_hosts file to check against.")
@click.option("--insecure-no-host-key-check", is_flag=True, help="Accept any SSH host key (not recommended).")
@click.option("--jobs", "-j", type=int, default=4, show_default=True, help="Parallel file transfers per device.")
@click.option("--parallel", type=int, default=8, show_default=True, help="Devices flashed at once (--inventory).")
@click.option("--limit-rate", default=None, help="Bandwidth cap per device, bytes/s (e.g. 5M).")
@click.option("--keep", type=int, default=2, show_default=True, help="Previous versions kept on the device.")
@click.option("--dry-run", is_flag=True, help="Show what would be copied; change nothing.")
@click.option("--rollback", is_flag=True, help="Switch the device back to its previous version.")
@click.option("--verify", "verify_only", is_flag=True, help="Verify the device's active bundle; copy nothing.")
@click.option("--trust", multiple=True, type=click.Path(path_type=Path, exists=True),
              help="Public key (or folder of .pub files) to install as the device's trust policy; from then on "
                   "the device takes only bundles signed by a trusted key.")
@click.option("--plain-http", is_flag=True, help="For an oci:// BUNDLE: a local registry without TLS.")
@click.option("--json", "as_json", is_flag=True)
def flash(bundle, dest, inventory, target, identity, known_hosts, insecure_no_host_key_check, jobs, parallel,
          limit_rate, keep, dry_run, rollback, verify_only, trust, plain_http, as_json) -> None:
    """Copy BUNDLE to a device (or a fleet), verify it there, and switch to it atomically."""
    from ..errors import FleetFlashError, UsageError
    from ..flash.flasher import FlashOptions, flash_bundle, verify_device
    from ..flash.flasher import rollback as do_rollback
    from ..oci.reference import is_oci
    from .rich_progress import RichProgress

    from_registry = is_oci(bundle)
    bundle = bundle if from_registry or bundle is None else Path(bundle)
    options = FlashOptions(target, identity, known_hosts, not insecure_no_host_key_check, jobs, dry_run, keep,
                           limit_rate, tuple(trust))
    if inventory is not None:
        if bundle is None:
            raise UsageError("--inventory needs a BUNDLE")
        if from_registry:
            raise UsageError("--inventory flashes a local bundle", hint="pull it first (edgeslm pull oci://… --out "
                             "DIR), or let the devices pull it themselves: edgeslm update DEST --follow oci://…")
        from ..flash.fleet import flash_fleet
        from .fleet_summary import print_fleet_summary

        with RichProgress(quiet=as_json) as progress:
            results = flash_fleet(bundle, inventory, options, progress, parallel)
        print_fleet_summary(results, as_json)
        if not all(r.ok for r in results):
            raise click.exceptions.Exit(FleetFlashError.exit_code)  # the summary shows each failure
        return
    if dest is None:
        raise UsageError("--to DEST is required (or --inventory FILE)")
    if rollback:
        report = do_rollback(dest, options)
    elif verify_only:
        report = verify_device(dest, options)
    else:
        if bundle is None:
            raise UsageError("BUNDLE is required to flash")
        with RichProgress(quiet=as_json) as progress:
            if from_registry:
                from ..oci.install import flash_from_oci

                report = flash_from_oci(bundle, dest, options, plain_http, progress)
            else:
                report = flash_bundle(bundle, dest, options, progress)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    if report.action == "dry-run":
        for item in report.plan:
            click.echo(f"  {item['action']:>6}  {item['path']}  {human_bytes(item['bytes'])}")
        click.echo(f"dry run: {sum(p['bytes'] for p in report.plan) / 2**20:,.1f} MiB to send to {report.destination}")
        return
    click.echo(f"{report.action}: {report.version} on {report.destination}: sent {report.sent_files} file(s), "
               f"{human_bytes(report.sent_bytes)} (resumed {report.resumed_files}, reused {report.reused_files} "
               f"on the device, kept {report.kept_files}); {report.verified_files} files verified on the device")
    if report.signed_by:
        click.echo(f"trusted signature: {', '.join(report.signed_by)}")
    if report.trust_changes:
        click.echo(f"device trust policy: {' '.join(report.trust_changes)}")
    if report.pruned:
        click.echo(f"removed old versions: {', '.join(report.pruned)}")
    if report.doctor:
        click.echo("device doctor:\n" + report.doctor.strip())
