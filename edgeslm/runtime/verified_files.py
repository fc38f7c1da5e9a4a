"""Verify an artifact's files before loading it, fast on the second load.

The first load hashes every file; the (size, mtime, ctime, inode) of files that matched are remembered in
the user cache (``~/.cache/edgeslm/verified/<bundle_id>.json``), so later loads only re-hash files
that changed on disk (size, mtime, ctime or inode: rewriting a file in place and setting its mtime back
still changes its ctime). ``mode="full"`` always re-hashes; ``mode="off"`` skips (not recommended).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..bundle.checksums import sha256_file
from ..bundle.manifest import Manifest
from ..errors import UsageError, VerificationError


def _cache_file(bundle_id: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeslm" / "verified" / f"{bundle_id}.json"


def verify_before_load(folder: Path, manifest: Manifest, artifact_id: str, mode: str = "fast") -> None:
    if mode not in ("fast", "full", "off"):
        raise UsageError(f"verify mode must be fast, full or off, not {mode!r}")
    if mode == "off":
        return
    art = manifest.artifact(artifact_id)
    cache_path = _cache_file(manifest.bundle_id)
    cache: dict[str, list] = {}
    if mode == "fast":
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cache = {}
    fresh: dict[str, list] = {}
    for entry in (*manifest.shared_files, *art.files):
        path = folder / entry.path
        try:
            st = path.stat()
        except OSError:
            raise VerificationError(f"{entry.path} is missing from the bundle",
                                    hint="re-copy the bundle (edgeslm flash verifies on the device)") from None
        key = str(path.resolve())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, entry.sha256]  # ctime: no one can set it back
        if st.st_size != entry.size:
            raise VerificationError(f"{entry.path} has {st.st_size} bytes, the manifest says {entry.size}: "
                                    "refusing to load", hint="re-copy or rebuild the bundle")
        if cache.get(key) != stamp and sha256_file(path) != entry.sha256:
            raise VerificationError(f"{entry.path} was altered after the build (sha256 mismatch): refusing to load",
                                    hint="re-copy or rebuild the bundle")
        fresh[key] = stamp
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_text(json.dumps({**cache, **fresh}))
    except OSError:
        pass  # a read-only home must not stop inference
