"""Flashing to a local or mounted folder (SD card, USB disk, NFS)."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..bundle.checksums import sha256_file
from ..errors import DiskSpaceError, EdgeslmError, FlashIOError
from .transport import copy_blocks

CHUNK = 1 << 20


def io_error(exc: OSError, where: str) -> EdgeslmError:
    if exc.errno == errno.ENOSPC:
        return DiskSpaceError(f"{where}: the destination is full", hint="free space on the device; nothing was switched")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return FlashIOError(f"{where}: the destination is read-only or not writable ({exc.strerror})",
                            hint="remount it read-write or pick another folder; nothing was switched")
    return FlashIOError(f"{where}: {exc.strerror or exc}")


class LocalTransport:
    resumable_bytes = True

    def __init__(self, rate_limiter=None):
        self.rate_limiter = rate_limiter

    def size(self, path: str) -> int | None:
        try:
            return os.stat(path).st_size
        except OSError:
            return None

    def makedirs(self, path: str) -> None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise io_error(exc, path) from None

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError:
            return []

    def read_text(self, path: str) -> str | None:
        try:
            return Path(path).read_text(encoding="utf-8")
        except OSError:
            return None

    def write_text(self, path: str, text: str) -> None:
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise io_error(exc, path) from None

    def upload(self, local: Path, remote: str, offset: int, progress: Callable[[int], None]) -> int:
        try:
            with open(local, "rb") as src, open(remote, "ab" if offset else "wb") as dst:
                sent = copy_blocks(src, dst, offset, CHUNK, self.rate_limiter, progress)
                dst.flush()
                os.fsync(dst.fileno())
        except OSError as exc:
            raise io_error(exc, remote) from None
        return sent

    def copy_within(self, src: str, dst: str) -> None:
        try:
            try:
                os.link(src, dst)  # same file system: no copy at all
            except OSError:
                shutil.copyfile(src, dst)
        except OSError as exc:
            raise io_error(exc, dst) from None

    def rename(self, src: str, dst: str) -> None:
        try:
            os.rename(src, dst)
        except OSError as exc:
            raise io_error(exc, dst) from None

    def switch_link(self, link: str, target: str) -> None:
        tmp = f"{link}.new"
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(target, tmp)
            os.replace(tmp, link)
        except OSError as exc:
            raise io_error(exc, link) from None

    def read_link(self, link: str) -> str | None:
        try:
            return os.readlink(link)
        except OSError:
            return None

    def remove(self, path: str) -> None:
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)

    def sha256(self, paths: list[str]) -> dict[str, str]:
        return {p: sha256_file(Path(p)) for p in paths if os.path.isfile(p)}

    def free_bytes(self, path: str) -> int | None:
        probe = path
        while probe and not os.path.exists(probe):
            probe = os.path.dirname(probe)
        return shutil.disk_usage(probe or "/").free

    def remote_doctor(self, bundle_path: str) -> str | None:
        return None  # a mounted card is not a running device

    def close(self) -> None:
        return None
