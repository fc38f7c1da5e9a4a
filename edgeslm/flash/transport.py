"""What flashing needs from a device connection; implemented for local folders, SSH and adb.

Paths are absolute POSIX paths on the device. ``upload`` appends from ``offset`` so that an
interrupted copy resumes where it stopped; ``copy_within`` reuses a file already on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol


class Transport(Protocol):
    resumable_bytes: bool  # can upload() continue a partial file (else: whole files only)

    def size(self, path: str) -> int | None: ...

    def makedirs(self, path: str) -> None: ...

    def listdir(self, path: str) -> list[str]: ...

    def read_text(self, path: str) -> str | None: ...

    def write_text(self, path: str, text: str) -> None:
        """Write atomically (temporary file + rename)."""

    def upload(self, local: Path, remote: str, offset: int, progress: Callable[[int], None]) -> int: ...

    def copy_within(self, src: str, dst: str) -> None: ...

    def rename(self, src: str, dst: str) -> None: ...

    def switch_link(self, link: str, target: str) -> None:
        """Point ``link`` at ``target`` atomically (symlink + rename over the old link)."""

    def read_link(self, link: str) -> str | None: ...

    def remove(self, path: str) -> None:
        """Remove a file or a folder tree; no error if missing."""

    def sha256(self, paths: list[str]) -> dict[str, str]: ...

    def free_bytes(self, path: str) -> int | None: ...

    def remote_doctor(self, bundle_path: str) -> str | None:
        """``edgeslm doctor --json`` output on the device, or None when edgeslm is not installed there."""

    def close(self) -> None: ...


def copy_blocks(src: BinaryIO, dst: Any, offset: int, chunk: int, rate_limiter: Any,
                progress: Callable[[int], None]) -> int:
    """The upload loop the byte-stream transports share (local folders, SFTP): from ``offset`` of ``src``
    into ``dst`` in ``chunk``-sized blocks, paced by the rate limiter, progress reported per block."""
    src.seek(offset)
    sent = 0
    while block := src.read(chunk):
        if rate_limiter:
            rate_limiter.wait(len(block))
        dst.write(block)
        sent += len(block)
        progress(len(block))
    return sent
