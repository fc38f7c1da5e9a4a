"""The header of a safetensors file (8-byte little-endian length, then JSON), read without the tensors.

Used to validate a checkpoint before any export (shapes, offsets, truncation) and to read back what a
converter wrote (dtypes and shapes of quantized tensors). Raises ValueError for a file that is not
safetensors; callers map that to their error. Standard library only.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 100 * 1024 * 1024


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(header length in bytes, header without ``__metadata__``)."""
    size = Path(path).stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than its 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise ValueError(f"header length {length} does not fit in the file")
        try:
            header = json.loads(fh.read(length))
        except UnicodeDecodeError as exc:
            raise ValueError(f"header is not UTF-8: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    header.pop("__metadata__", None)
    return length, header
