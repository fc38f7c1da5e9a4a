"""Flash one bundle to one device: verify locally, stage, verify on the device, switch, verify again.

Nothing the device is running is touched until the new version is complete and verified there; a
flash that fails at any point leaves the previous bundle active and complete. Files the device already
has (same sha256 in an installed version) are copied on the device instead of sent; an interrupted
copy resumes from its partial file on the next run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..bundle.manifest import Manifest, manifest_from_json
from ..bundle.pack import OpenedBundle
from ..bundle.signatures import SIGNATURE_NAME, SIGNED_MANIFEST_NAME, check_signatures
from ..bundle.verify import verify_bundle
from ..errors import DiskSpaceError, UsageError, VerificationError
from ..progress import NullProgress, Progress
from .destination import Destination, parse_destination
from .device_layout import Layout, activate, active_version, previous_version, prune
from .device_trust import apply_updates, check_texts, device_keys, install_policy, planned_keys, policy_to_apply
from .rate_limit import RateLimiter, parse_rate
from .transport import Transport


@dataclass(frozen=True)
class FlashOptions:
    target: str | None = None
    identity: Path | None = None
    known_hosts: Path | None = None
    check_host_key: bool = True
    jobs: int = 4
    dry_run: bool = False
    keep_previous: int = 2
    limit_rate: str | None = None
    trust: tuple[Path, ...] = ()  # public keys to install as the device's trust policy (flash --trust)


@dataclass
class FlashReport:
    destination: str
    version: str
    action: str  # flashed | already-active | activated | rolled-back | dry-run | verified
    files: int = 0
    sent_files: int = 0
    sent_bytes: int = 0
    resumed_files: int = 0
    reused_files: int = 0
    kept_files: int = 0
    verified_files: int = 0
    pruned: list[str] = field(default_factory=list)
    doctor: str | None = None
    plan: list[dict] = field(default_factory=list)
    signed_by: list[str] = field(default_factory=list)  # accepted signatures, under the device's trust policy
    trust_changes: list[str] = field(default_factory=list)  # +key / -key applied to the device's policy
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        return data


def open_transport(dest: Destination, options: FlashOptions) -> Transport:
    limiter = RateLimiter(rate) if (rate := parse_rate(options.limit_rate)) else None
    if dest.kind == "ssh":
        from .ssh_transport import SshTransport
        return SshTransport(dest, options.identity, options.known_hosts, options.check_host_key, limiter)
    if dest.kind == "adb":
        from .adb_transport import AdbTransport
        return AdbTransport(dest, limiter)
    from .local_transport import LocalTransport
    return LocalTransport(limiter)


def select_for_target(manifest: Manifest, target: str | None) -> tuple[Manifest, str]:
    """The manifest restricted to one target's artifacts, and the version name on the device."""
    if target is None:
        return manifest, manifest.bundle_id
    from ..config.targets import resolve_target

    name = target if target in manifest.targets else resolve_target(target).name
    if name not in manifest.targets:
        raise UsageError(f"the bundle was not built for target '{target}'",
                         hint=f"its targets: {', '.join(manifest.targets)}")
    return manifest.for_target(name), f"{manifest.bundle_id}-{name}"


def flash_bundle(bundle: Path, destination: str, options: FlashOptions, progress: Progress | None = None) -> FlashReport:
    progress = progress or NullProgress()
    dest = parse_destination(destination)
    if options.jobs < 1:
        raise UsageError("[[jobs]] must be at least 1")
    started = time.monotonic()
    with OpenedBundle(Path(bundle)) as opened:
        with progress.task(f"{dest}: verifying the local bundle"):
            report = verify_bundle(opened.folder)
        report.raise_for_problems()  # never flash a tampered bundle
        manifest, version = select_for_target(report.manifest, options.target)
        texts = _manifest_texts(opened.folder, manifest, options.target is not None)
        transport = open_transport(dest, options)
        try:
            result = _flash(transport, Layout(dest.path), opened.folder, manifest, version, options, progress,
                            str(dest), texts)
        finally:
            transport.close()
    result.seconds = round(time.monotonic() - started, 2)
    return result


def _manifest_texts(folder: Path, manifest: Manifest, subset: bool) -> dict[str, str]:
    sig = folder / SIGNATURE_NAME
    return manifest_texts((folder / "manifest.json").read_text(encoding="utf-8"),
                          sig.read_text(encoding="utf-8") if sig.is_file() else None, manifest if subset else None)


def manifest_texts(original: str, signatures: str | None, subset: Manifest | None) -> dict[str, str]:
    """The manifest files an installed version gets: ``manifest.json`` (one target's subset with
    ``--target``), and for a signed bundle ``manifest.sig`` (+ the signed full manifest as
    ``signed-manifest.json`` when a subset is installed). Written last, in this order, so that a staged
    folder with a manifest is complete."""
    if signatures is None:
        return {"manifest.json": subset.dumps() if subset is not None else original}
    texts = {SIGNATURE_NAME: signatures}
    if subset is not None:
        texts[SIGNED_MANIFEST_NAME] = original
    texts["manifest.json"] = subset.dumps() if subset is not None else original
    return texts


def _flash(t: Transport, layout: Layout, local: Path, manifest: Manifest, version: str, options: FlashOptions,
           progress: Progress, label: str, texts: dict[str, str]) -> FlashReport:
    entries = [(f.path, f.size, f.sha256) for f in manifest.all_files()]
    entries += [(name, len(text.encode()), hashlib.sha256(text.encode()).hexdigest()) for name, text in texts.items()]
    report = FlashReport(label, version, "flashed", files=len(entries))
    keys, fresh = policy_to_apply(t, layout, options.trust, label)
    new_keys = None
    if keys:  # the device's policy decides, before anything is sent or switched
        check = check_signatures(texts["manifest.json"], texts.get(SIGNATURE_NAME), texts.get(SIGNED_MANIFEST_NAME),
                                 keys, label)
        report.signed_by = [f"{s.signer} ({s.key_id})" for s in check.accepted]
        new_keys = planned_keys(keys, check)
        if fresh and not options.dry_run:
            install_policy(t, layout, keys)
            report.trust_changes = [f"+{k}" for k in keys]
    current = active_version(t, layout)
    installed = t.listdir(layout.versions)
    if version in installed and not options.dry_run:
        _verify_remote(t, layout.version(version), entries, report, "installed")
        if version == current:
            report.action = "already-active"
        else:
            activate(t, layout, version, manifest.bundle_id, "flash")
            report.action = "activated"
        if new_keys is not None:
            report.trust_changes += apply_updates(t, layout, keys, new_keys)
        report.doctor = t.remote_doctor(layout.current_link)
        return report
    reuse = _reusable_files(t, layout, installed)
    staged = layout.staged(version)
    plan = []
    for path, size, digest in entries:
        remote = f"{staged}/{path}"
        have = t.size(remote)
        part = t.size(remote + ".part") if t.resumable_bytes else None
        if have == size:
            plan.append({"path": path, "action": "keep", "bytes": 0})
        elif part is not None and part <= size and path not in texts:
            plan.append({"path": path, "action": "resume", "offset": part, "bytes": size - part})
        elif digest in reuse and path not in texts:
            plan.append({"path": path, "action": "reuse", "source": reuse[digest], "bytes": 0})
        else:
            plan.append({"path": path, "action": "send", "bytes": size})
    report.plan = plan
    if options.dry_run:
        report.action = "dry-run"
        return report
    needed = sum(p["bytes"] for p in plan)
    t.makedirs(staged)
    free = t.free_bytes(staged)
    if free is not None and free < needed:
        raise DiskSpaceError(f"{label}: needs {needed / 2**20:,.1f} MiB, the device has {free / 2**20:,.1f} MiB free",
                             hint="free space (older versions: [[keep]] 0) and run again; nothing was switched")
    with progress.task(f"{label}: sending", total=needed) as advance:
        with ThreadPoolExecutor(max_workers=options.jobs) as pool:
            list(pool.map(lambda item: _transfer(t, local, staged, item, report, advance),
                          [p for p in plan if p["path"] not in texts]))
    for name, text in texts.items():  # manifest.json last: a staged folder with a manifest is complete
        t.write_text(f"{staged}/{name}", text)
    with progress.task(f"{label}: verifying on the device"):
        _verify_remote(t, staged, entries, report, "staged", remove_bad=True)
    t.makedirs(layout.versions)
    if version in t.listdir(layout.versions):
        t.remove(layout.version(version))
    t.rename(staged, layout.version(version))
    activate(t, layout, version, manifest.bundle_id, "flash")
    with progress.task(f"{label}: verifying the active bundle"):
        _verify_remote(t, layout.version(version), entries, report, "active")
    if new_keys is not None:
        report.trust_changes += apply_updates(t, layout, keys, new_keys)
    report.doctor = t.remote_doctor(layout.current_link)
    report.pruned = prune(t, layout, options.keep_previous)
    return report


def _transfer(t: Transport, local: Path, staged: str, item: dict, report: FlashReport, advance) -> None:
    remote = f"{staged}/{item['path']}"
    parent = remote.rsplit("/", 1)[0]
    t.makedirs(parent)
    action = item["action"]
    if action == "keep":
        report.add(kept_files=1)
    elif action == "reuse":
        t.copy_within(item["source"], remote)
        report.add(reused_files=1)
    else:
        sent = t.upload(local / item["path"], remote + ".part", item.get("offset", 0), advance)
        t.rename(remote + ".part", remote)
        report.add(sent_bytes=sent, sent_files=1, resumed_files=int(action == "resume"))


def _reusable_files(t: Transport, layout: Layout, installed: list[str]) -> dict[str, str]:
    """sha256 -> path of a file in an installed (verified) version on the device."""
    found: dict[str, str] = {}
    for name in installed:
        text = t.read_text(f"{layout.version(name)}/manifest.json")
        try:
            other = manifest_from_json(json.loads(text)) if text else None
        except Exception:  # noqa: BLE001 - an unreadable old version simply offers nothing to reuse
            other = None
        for entry in other.all_files() if other else []:
            found.setdefault(entry.sha256, f"{layout.version(name)}/{entry.path}")
    return found


def _verify_remote(t: Transport, folder: str, entries: list[tuple[str, int, str]], report: FlashReport, what: str,
                   remove_bad: bool = False) -> None:
    hashes = t.sha256([f"{folder}/{path}" for path, _, _ in entries])
    bad = [path for path, _, digest in entries if hashes.get(f"{folder}/{path}") != digest]
    if bad:
        if remove_bad:
            for path in bad:
                t.remove(f"{folder}/{path}")
        raise VerificationError(f"{report.destination}: {len(bad)} {what} file(s) failed verification on the device: "
                                f"{', '.join(bad[:3])}{'…' if len(bad) > 3 else ''}", problems=bad,
                                hint="the previously active bundle is unchanged; run the flash again to re-send them")
    report.verified_files = len(entries)


def rollback(destination: str, options: FlashOptions) -> FlashReport:
    """Verify the previous version on the device, then switch back to it."""
    return _installed_version(destination, options, "rolled-back")


def verify_device(destination: str, options: FlashOptions) -> FlashReport:
    """Verify the device's active bundle against its manifest; change nothing."""
    return _installed_version(destination, options, "verified")


def _installed_version(destination: str, options: FlashOptions, action: str) -> FlashReport:
    dest = parse_destination(destination)
    t = open_transport(dest, options)
    try:
        layout = Layout(dest.path)
        rolling_back = action == "rolled-back"
        version = previous_version(t, layout) if rolling_back else active_version(t, layout)
        if version is None:
            missing = "no previous version to roll back to" if rolling_back else "no bundle has been flashed there"
            raise UsageError(f"{dest}: {missing}")
        report = FlashReport(str(dest), version, action)
        keys = device_keys(t, layout)
        if keys:  # never switch back to (or vouch for) a version the device's policy does not trust
            check = check_texts(t, layout.version(version), keys, f"{dest}: version {version}")
            report.signed_by = [f"{s.signer} ({s.key_id})" for s in check.accepted]
        manifest = _verify_installed(t, layout, version, report)
        if rolling_back:
            activate(t, layout, version, manifest.bundle_id, "rollback")
        report.doctor = t.remote_doctor(layout.current_link)
        return report
    finally:
        t.close()


def _verify_installed(t: Transport, layout: Layout, version: str, report: FlashReport) -> Manifest:
    text = t.read_text(f"{layout.version(version)}/manifest.json")
    if not text:
        raise VerificationError(f"{report.destination}: version {version} has no manifest on the device")
    manifest = manifest_from_json(json.loads(text))
    entries = [(f.path, f.size, f.sha256) for f in manifest.all_files()]
    report.files = len(entries)
    _verify_remote(t, layout.version(version), entries, report, "installed")
    return manifest
