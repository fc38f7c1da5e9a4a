"""Recompute every checksum of a bundle and compare with its manifest; with trusted keys, check the
manifest's signature first (``signatures.py``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VerificationError
from .checksums import sha256_file
from .manifest import MANIFEST_NAME, Manifest, read_manifest
from .signatures import SIGNATURE_NAME, SIGNED_MANIFEST_NAME, SignatureCheck, check_folder
from .signing_keys import PublicKey


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str  # missing | extra | truncated | size | altered
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind} ({self.detail})"


@dataclass
class VerifyReport:
    bundle: Path
    manifest: Manifest
    checked_files: int = 0
    checked_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    signature: SignatureCheck | None = None  # set when trusted keys were given (and one of them signed)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            first = self.problems[0]
            more = f" and {len(self.problems) - 1} more problem(s)" if len(self.problems) > 1 else ""
            raise VerificationError(f"bundle {self.bundle} failed verification: {first}{more}",
                                    problems=[str(p) for p in self.problems],
                                    hint="rebuild or re-copy the bundle; never run a bundle that fails verify")


def verify_bundle(folder: Path, progress: Callable[[int], None] | None = None,
                  artifact_ids: list[str] | None = None, trusted: dict[str, PublicKey] | None = None) -> VerifyReport:
    """Check every file listed in the manifest (or only the shared files and the given artifacts). With
    ``trusted`` keys, first the signature: SignatureError (no signature, unknown key, bad or stale
    signature) before any checksum is computed."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    report = VerifyReport(folder, manifest)
    if trusted is not None:
        report.signature = check_folder(folder, trusted)
    if artifact_ids is None:
        entries = manifest.all_files()
    else:
        entries = [*manifest.shared_files,
                   *(f for a in manifest.artifacts if a.id in artifact_ids for f in a.files)]
    for entry in entries:
        path = folder / entry.path
        if not path.is_file():
            report.problems.append(Problem(entry.path, "missing", "listed in the manifest, not on disk"))
            continue
        size = path.stat().st_size
        if size != entry.size:
            kind = "truncated" if size < entry.size else "size"
            report.problems.append(Problem(entry.path, kind, f"{size} bytes on disk, {entry.size} in the manifest"))
            continue
        digest = sha256_file(path, progress)
        report.checked_files += 1
        report.checked_bytes += size
        if digest != entry.sha256:
            report.problems.append(Problem(entry.path, "altered", f"sha256 {digest[:12]}…, manifest {entry.sha256[:12]}…"))
    if artifact_ids is None:
        listed = {e.path for e in manifest.all_files()} | {MANIFEST_NAME, SIGNATURE_NAME, SIGNED_MANIFEST_NAME}
        for extra in sorted(_walk(folder) - listed):
            report.problems.append(Problem(extra, "extra", "on disk, not in the manifest"))
    return report


def _walk(folder: Path) -> set[str]:
    found = set()
    for root, _dirs, files in os.walk(folder):
        for name in files:
            found.add((Path(root) / name).relative_to(folder).as_posix())
    return found
