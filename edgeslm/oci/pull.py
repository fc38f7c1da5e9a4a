"""``edgeslm pull oci://…[@sha256:…] --out DIR``: download a bundle's blobs, each checked by digest,
resumable, reusing files a previous version already has; then rename into place (docs/oci.md).

Under a trust policy (``--trusted-key``, or the device's ``trust/`` for ``--install``) the signature is
checked right after the small manifest blobs, before any large download.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..bundle.checksums import sha256_file
from ..bundle.manifest import FileEntry, Manifest, manifest_from_json, read_manifest
from ..bundle.signatures import check_signatures
from ..bundle.signing_keys import PublicKey
from ..errors import EdgeslmError, OutputExistsError, RegistryError
from ..flash.flasher import manifest_texts, select_for_target
from ..flash.rate_limit import RateLimiter, parse_rate
from ..progress import NullProgress, Progress
from .bundle_layout import MANIFEST_MEDIA_TYPE, OciBundle, oci_to_bundle
from .reference import Reference, parse_reference
from .registry_client import CHUNK, RegistryClient, import_httpx


@dataclass
class PullReport:
    reference: str
    digest: str
    bundle_id: str
    version: str
    out: str = ""
    action: str = "pulled"  # pulled | installed | already-active | up-to-date
    files: int = 0
    downloaded_files: int = 0
    downloaded_bytes: int = 0
    resumed_files: int = 0
    reused_files: int = 0  # copied from a version already on this host (same sha256)
    kept_files: int = 0  # complete in the staging folder from an interrupted pull
    signed_by: list[str] = field(default_factory=list)
    trust_changes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Resolved:
    """A bundle in a registry, its small blobs read and checked; what to download for which target."""

    ref: Reference
    digest: str
    oci: OciBundle
    original: str  # manifest.json as pushed
    signatures: str | None
    manifest: Manifest  # the full manifest
    chosen: Manifest  # restricted to the target, or the full one
    version: str
    subset: bool

    def texts(self) -> dict[str, str]:
        return manifest_texts(self.original, self.signatures, self.chosen if self.subset else None)


def resolve(client: RegistryClient, ref: Reference, target: str | None,
            trusted: dict[str, PublicKey] | None) -> tuple[Resolved, list[str]]:
    data, digest = client.get_manifest(ref.repository, ref.ref, MANIFEST_MEDIA_TYPE)
    oci = oci_to_bundle(data, str(ref))
    original = client.blob_bytes(ref.repository, oci.config.digest).decode("utf-8")
    signatures = client.blob_bytes(ref.repository, oci.signature.digest).decode("utf-8") if oci.signature else None
    try:
        manifest = manifest_from_json(json.loads(original), f"{ref} manifest.json")
    except ValueError as exc:
        raise RegistryError(f"{ref}: manifest.json is not valid JSON: {exc}") from None
    listed = {f.path: f"sha256:{f.sha256}" for f in manifest.all_files()}
    if listed != {b.path: b.digest for b in oci.files}:
        raise RegistryError(f"{ref}: the image's layers are not the files its manifest.json lists: refused")
    signed_by: list[str] = []
    if trusted is not None:  # before any large download
        check = check_signatures(original, signatures, None, trusted, str(ref))
        signed_by = [f"{s.signer} ({s.key_id})" for s in check.accepted]
    chosen, version = select_for_target(manifest, target)
    return Resolved(ref, digest, oci, original, signatures, manifest, chosen, version, target is not None), signed_by


def fetch_files(client: RegistryClient, resolved: Resolved, staging: Path, reuse: dict[str, Path],
                report: PullReport, limit_rate: str | None, progress: Progress) -> None:
    """Every file of the chosen manifest into ``staging`` (kept / reused / resumed / downloaded, each
    hashed), then the manifest files last."""
    limiter = RateLimiter(rate) if (rate := parse_rate(limit_rate)) else None
    entries = list(resolved.chosen.all_files())
    report.files = len(entries) + len(resolved.texts())
    todo = []
    for entry in entries:
        dest = staging / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_file() and dest.stat().st_size == entry.size and sha256_file(dest) == entry.sha256:
            report.kept_files += 1
        elif entry.sha256 in reuse and _copy_checked(reuse[entry.sha256], dest, entry):
            report.reused_files += 1
        else:
            todo.append(entry)
    total = sum(e.size - _part_size(staging / e.path, e.size) for e in todo)
    with progress.task(f"Downloading from {resolved.ref.registry}", total=total) as advance:
        for entry in todo:
            _download(client, resolved.ref, entry, staging / entry.path, limiter, advance, report)
    for name, text in resolved.texts().items():
        (staging / name).write_text(text, encoding="utf-8")


def pull_bundle(reference: str, out: Path, target: str | None = None, plain_http: bool = False,
                trusted: dict[str, PublicKey] | None = None, limit_rate: str | None = None, force: bool = False,
                progress: Progress | None = None) -> PullReport:
    """Pull into ``out`` (a bundle folder), through ``.OUT.partial`` beside it (kept for resuming)."""
    progress = progress or NullProgress()
    started = time.monotonic()
    ref = parse_reference(reference)
    out = Path(out).expanduser().absolute()
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists", hint="pass [[force]] to replace it once the pull is complete")
    with RegistryClient(ref.registry, plain_http) as client:
        resolved, signed_by = resolve(client, ref, target, trusted)
        report = PullReport(str(ref), resolved.digest, resolved.manifest.bundle_id, resolved.version, str(out),
                            signed_by=signed_by)
        staging = out.with_name(f".{out.name}.partial")
        staging.mkdir(parents=True, exist_ok=True)
        fetch_files(client, resolved, staging, files_by_sha(out), report, limit_rate, progress)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out)
    report.seconds = round(time.monotonic() - started, 2)
    return report


def files_by_sha(*folders: Path) -> dict[str, Path]:
    """sha256 -> path of the files of bundles on this host (to copy instead of download)."""
    found: dict[str, Path] = {}
    for folder in folders:
        try:
            manifest = read_manifest(folder)
        except EdgeslmError:
            continue
        for entry in manifest.all_files():
            if (folder / entry.path).is_file():
                found.setdefault(entry.sha256, folder / entry.path)
    return found


def _part_size(dest: Path, size: int) -> int:
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    return have if have <= size else 0


def _copy_checked(source: Path, dest: Path, entry: FileEntry) -> bool:
    part = dest.with_name(dest.name + ".part")
    try:
        shutil.copyfile(source, part)
    except OSError:
        return False
    if part.stat().st_size != entry.size or sha256_file(part) != entry.sha256:
        part.unlink(missing_ok=True)
        return False  # the local copy changed since it was verified: download instead
    os.replace(part, dest)
    return True


def _download(client: RegistryClient, ref: Reference, entry: FileEntry, dest: Path, limiter: RateLimiter | None,
              advance: Callable[[int], None], report: PullReport) -> None:
    part = dest.with_name(dest.name + ".part")
    offset = _part_size(dest, entry.size)
    digest = hashlib.sha256()
    if offset:
        with part.open("rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
    response = client.open_blob(ref.repository, f"sha256:{entry.sha256}", offset)
    httpx = import_httpx()
    try:
        if offset and response.status_code != 206:  # the registry ignored the Range: start again
            offset, digest = 0, hashlib.sha256()
        with part.open("r+b" if offset else "wb") as handle:
            handle.seek(offset)
            handle.truncate()
            for block in response.iter_bytes(CHUNK):
                if limiter:
                    limiter.wait(len(block))
                handle.write(block)
                digest.update(block)
                advance(len(block))
                report.downloaded_bytes += len(block)
    except httpx.HTTPError as exc:
        raise RegistryError(f"{ref}: the download of {entry.path} was cut off ({type(exc).__name__})",
                            hint="run the same pull again: it resumes from the partial file") from None
    finally:
        response.close()
    if part.stat().st_size != entry.size or digest.hexdigest() != entry.sha256:
        part.unlink(missing_ok=True)
        raise RegistryError(f"{ref}: the blob for {entry.path} does not match its digest sha256:{entry.sha256[:12]}…: "
                            "refused", hint="the registry's copy is damaged or was tampered with; push the bundle again")
    os.replace(part, dest)
    report.downloaded_files += 1
    report.resumed_files += int(offset > 0)
