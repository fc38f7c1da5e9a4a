"""sha256 of files, streamed (never reads a whole multi-GB weight file into memory)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

CHUNK = 8 << 20


def sha256_file(path: Path, progress: Callable[[int], None] | None = None, chunk: int = CHUNK) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()
