"""The temporary folders of one build beside its destination, and the removal of stale ones.

A build of ``OUT`` writes into ``.OUT.partial-TOKEN`` (becomes the bundle) and ``.OUT.work-TOKEN``
(intermediate models, converter logs), both owned by ``.OUT.build-TOKEN.lock``, which the build holds
locked (``flock``) while it runs; the lock is created first, the folders after it. When a build ends,
its folders go: on success the work folder is deleted, on failure only the converter logs are kept,
in ``OUT.logs/``. A build that was killed (SIGKILL, power loss) cannot clean up; the next build into
the same ``OUT`` removes what such builds left: folders of that exact name pattern whose lock file is
no longer locked by anyone (or missing), and ``.OUT.old-*`` folders of an interrupted replace. A lock
that is held belongs to a build still running, whose folders are never touched; nothing with another
name is ever touched.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
from pathlib import Path

KINDS = ("partial", "work")


class BuildFolders:
    def __init__(self, out: Path):
        self.out = out
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.lock_path = out.parent / f".{out.name}.build-{token}.lock"
        self._lock = open(self.lock_path, "w")  # noqa: SIM115 - held for the whole build
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.staging = out.parent / f".{out.name}.partial-{token}"
        self.work = out.parent / f".{out.name}.work-{token}"
        self.staging.mkdir(mode=0o755)
        self.work.mkdir()

    @property
    def logs(self) -> Path:
        return self.out.with_name(f"{self.out.name}.logs")

    def succeeded(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)  # already renamed into place: a no-op then
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.logs, ignore_errors=True)  # logs of an earlier failed build are stale now
        self._release()

    def failed(self) -> Path | None:
        """Remove everything but the converter logs; return the folder they were moved to, if any."""
        shutil.rmtree(self.staging, ignore_errors=True)
        logs = sorted(self.work.glob("*.log"))
        kept = None
        if logs:
            shutil.rmtree(self.logs, ignore_errors=True)
            self.logs.mkdir()
            for log in logs:
                os.replace(log, self.logs / log.name)
            kept = self.logs
        shutil.rmtree(self.work, ignore_errors=True)
        self._release()
        return kept

    def _release(self) -> None:
        self.lock_path.unlink(missing_ok=True)
        self._lock.close()


def remove_stale(out: Path) -> list[Path]:
    """Remove the folders that killed builds of ``out`` left beside it; return what was removed."""
    parent, name = out.parent, re.escape(out.name)
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{name}\.(?:(?P<kind>partial|work)-(?P<token>[\w-]+)|old-\d+|build-(?P<lock>[\w-]+)\.lock)$")
    live: set[str] = set()
    stale_locks: list[Path] = []
    entries = []
    for entry in parent.iterdir():
        match = pattern.match(entry.name)
        if not match:
            continue
        if match.group("lock"):
            if _locked(entry):
                live.add(match.group("lock"))
            else:
                stale_locks.append(entry)
        else:
            entries.append((entry, match.group("token")))
    removed = []
    for entry, token in entries:
        if token is not None and token in live:
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed.append(entry)
    for lock in stale_locks:
        lock.unlink(missing_ok=True)
        removed.append(lock)
    return removed


def _locked(path: Path) -> bool:
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except OSError:
        return False
