"""Devices that pull: ``edgeslm pull oci://… --install DEST`` and ``edgeslm update DEST --follow oci://…:TAG``.

The same flash layout as ``edgeslm flash`` (``flash/device_layout.py``): the blobs are downloaded into
``DEST/staging/<version>/`` (resumable; files an installed version has are copied, not downloaded), checked
by digest, renamed into ``DEST/versions/``, and ``DEST/current`` is switched atomically; a failure leaves
the active version as it was. The device's trust policy (``DEST/trust/``) is checked before any large
download, and a trusted signature's key update is applied after the switch. ``DEST/oci-source.json``
records what was installed from where, so that ``update`` installs only when the tag moved.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..bundle.signatures import SIGNATURE_NAME, SIGNED_MANIFEST_NAME, check_signatures
from ..errors import UsageError
from ..flash.device_layout import Layout, activate, active_version, prune
from ..flash.device_trust import apply_updates, device_keys, planned_keys
from ..flash.local_transport import LocalTransport
from ..progress import NullProgress, Progress
from .bundle_layout import MANIFEST_MEDIA_TYPE
from .pull import PullReport, fetch_files, files_by_sha, resolve
from .reference import parse_reference
from .registry_client import RegistryClient

SOURCE_RECORD = "oci-source.json"


def install_from_oci(reference: str, dest: Path, target: str | None = None, plain_http: bool = False,
                     limit_rate: str | None = None, keep_previous: int = 2,
                     progress: Progress | None = None) -> PullReport:
    progress = progress or NullProgress()
    started = time.monotonic()
    ref = parse_reference(reference)
    root = Path(dest).expanduser().absolute()
    t, layout = LocalTransport(None), Layout(str(root))
    keys = device_keys(t, layout)
    with RegistryClient(ref.registry, plain_http) as client:
        resolved, _ = resolve(client, ref, target, None)
        report = PullReport(str(ref), resolved.digest, resolved.manifest.bundle_id, resolved.version, str(root),
                            action="installed")
        new_keys = None
        if keys:  # the device's own policy, before any large download
            texts = resolved.texts()
            check = check_signatures(texts["manifest.json"], texts.get(SIGNATURE_NAME),
                                     texts.get(SIGNED_MANIFEST_NAME), keys, str(ref))
            report.signed_by = [f"{s.signer} ({s.key_id})" for s in check.accepted]
            new_keys = planned_keys(keys, check)
        version = resolved.version
        final = Path(layout.version(version))
        if active_version(t, layout) == version and (final / "manifest.json").is_file() and \
                (final / "manifest.json").read_text(encoding="utf-8") == resolved.texts()["manifest.json"]:
            report.action = "already-active"
        else:
            installed = [Path(layout.version(n)) for n in t.listdir(layout.versions)]
            staging = Path(layout.staged(version))
            staging.mkdir(parents=True, exist_ok=True)
            fetch_files(client, resolved, staging, files_by_sha(*installed), report, limit_rate, progress)
            if final.exists():
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, final)
            activate(t, layout, version, resolved.manifest.bundle_id, "pull")
            prune(t, layout, keep_previous)
        if new_keys is not None:
            report.trust_changes = apply_updates(t, layout, keys, new_keys)
    record = {"reference": str(ref), "digest": resolved.digest, "version": version,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "target": target, "plain_http": plain_http}
    t.write_text(str(root / SOURCE_RECORD), json.dumps(record, indent=1) + "\n")
    report.seconds = round(time.monotonic() - started, 2)
    return report


def update_from_oci(dest: Path, follow: str | None = None, target: str | None = None, plain_http: bool | None = None,
                    limit_rate: str | None = None, keep_previous: int = 2,
                    progress: Progress | None = None) -> PullReport:
    """Install ``follow`` (default: what DEST was installed from) when its tag points somewhere new."""
    root = Path(dest).expanduser().absolute()
    try:
        record = json.loads((root / SOURCE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    reference = follow or record.get("reference")
    if not reference:
        raise UsageError(f"{root} was not installed from a registry", hint="pass [[follow]] oci://HOST/REPO:TAG")
    ref = parse_reference(reference)
    plain = bool(record.get("plain_http")) if plain_http is None else plain_http
    target = target if target is not None else record.get("target")
    with RegistryClient(ref.registry, plain) as client:
        digest = client.manifest_digest(ref.repository, ref.ref, MANIFEST_MEDIA_TYPE)
    layout = Layout(str(root))
    current = active_version(LocalTransport(None), layout)
    if digest == record.get("digest") and current == record.get("version") and str(ref) == record.get("reference"):
        return PullReport(str(ref), digest, "", current or "", str(root), action="up-to-date")
    return install_from_oci(reference, root, target, plain, limit_rate, keep_previous, progress)


def flash_from_oci(reference: str, destination: str, options, plain_http: bool = False,
                   progress: Progress | None = None):
    """``edgeslm flash oci://… --to DEST``: a local DEST installs straight from the registry; ssh/adb
    devices get it through a cache on this host (``~/.cache/edgeslm/oci/``), then the usual flash
    (stage, verify, switch), which checks the device's own trust policy."""
    from ..flash.destination import parse_destination
    from ..flash.flasher import flash_bundle
    from .pull import pull_bundle

    dest = parse_destination(destination)
    if dest.kind == "local" and not options.trust:
        return install_from_oci(reference, Path(dest.path), options.target, plain_http, options.limit_rate,
                                options.keep_previous, progress)
    ref = parse_reference(reference)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeslm" / "oci"
    cache = base / f"{ref.registry}/{ref.repository}".replace(":", "_").replace("/", "+")
    pull_bundle(reference, cache, None, plain_http, None, options.limit_rate, True, progress)
    return flash_bundle(cache, destination, options, progress)
