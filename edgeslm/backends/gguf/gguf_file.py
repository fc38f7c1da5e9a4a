"""Read a GGUF file's header with the standard library: metadata, tensor infos, and the size it must have.

The device side checks an artifact's GGUF before llama.cpp maps it (a truncated or foreign file makes
llama.cpp fail with a bare message or, for some damage, crash), and the build side reads back what it
wrote. Only the header is parsed; tensor data is never read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ...errors import GgufFileError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# ggml type id -> (name, elements per block, bytes per block): the types edgeslm's artifacts may hold
TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
         7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
         14: ("Q6_K", 256, 210), 30: ("BF16", 1, 2)}
TYPE_IDS = {name: type_id for type_id, (name, _, _) in TYPES.items()}
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_MAX_COUNT = 1 << 26  # no real header holds more strings, tensors or array items than this


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: the fastest-varying dimension first
    type_name: str
    offset: int  # from the start of the data section
    nbytes: int


@dataclass(frozen=True)
class GgufHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_start: int

    @property
    def expected_size(self) -> int:
        return self.data_start + max((t.offset + t.nbytes for t in self.tensors), default=0)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}")

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for tensor in self.tensors:
            counts[tensor.type_name] = counts.get(tensor.type_name, 0) + 1
        return dict(sorted(counts.items()))


class _Reader:
    def __init__(self, handle: BinaryIO, path: Path):
        self.handle, self.path = handle, path

    def take(self, size: int) -> bytes:
        data = self.handle.read(size)
        if len(data) != size:
            raise GgufFileError(f"{self.path.name} is truncated inside its header",
                                hint="copy the file again ('edgeslm verify' names damaged files)")
        return data

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self) -> int:
        value = self.scalar("<Q")
        if value > _MAX_COUNT:
            raise GgufFileError(f"{self.path.name} has a corrupt GGUF header (a count of {value})")
        return value

    def string(self) -> str:
        return self.take(self.count()).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            item, n = self.scalar("<I"), self.count()
            if item in _SCALARS:
                fmt = _SCALARS[item]
                return list(struct.unpack(f"<{n}{fmt[1]}", self.take(n * struct.calcsize(fmt))))
            return [self.value(item) for _ in range(n)]
        raise GgufFileError(f"{self.path.name} has a corrupt GGUF header (value type {kind})")


def read_header(path: Path) -> GgufHeader:
    """The header of a GGUF file; GgufFileError when it is not one, is damaged or cut short."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            reader = _Reader(handle, path)
            if handle.read(4) != MAGIC:
                raise GgufFileError(f"{path.name} is not a GGUF file (no 'GGUF' magic)",
                                    hint="the artifact's model.gguf was replaced or damaged; rebuild or re-flash it")
            version = reader.scalar("<I")
            if version not in (2, 3):
                raise GgufFileError(f"{path.name} is GGUF version {version}; edgeslm reads versions 2 and 3")
            n_tensors, n_kv = reader.count(), reader.count()
            metadata = {}
            for _ in range(n_kv):
                key = reader.string()
                metadata[key] = reader.value(reader.scalar("<I"))
            infos = []
            for _ in range(n_tensors):
                name = reader.string()
                dims = tuple(reader.scalar("<Q") for _ in range(reader.scalar("<I")))
                infos.append((name, dims, reader.scalar("<I"), reader.scalar("<Q")))
            alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT)) or DEFAULT_ALIGNMENT
            position = handle.tell()
    except OSError as exc:
        raise GgufFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    tensors = []
    for name, dims, type_id, offset in infos:
        type_name, nbytes = _size(path, name, dims, type_id)
        tensors.append(TensorInfo(name, dims, type_name, offset, nbytes))
    return GgufHeader(path, version, metadata, tuple(tensors), -(-position // alignment) * alignment)


def _size(path: Path, name: str, dims: tuple[int, ...], type_id: int) -> tuple[str, int]:
    if type_id not in TYPES:
        raise GgufFileError(f"{path.name}: tensor '{name}' has ggml type {type_id}, which edgeslm's GGUF artifacts "
                            f"do not use (supported: {', '.join(n for n, _, _ in TYPES.values())})",
                            hint="rebuild the artifact with quant_type Q4_0, Q8_0 or Q4_K_M")
    type_name, block, size = TYPES[type_id]
    elements = 1
    for d in dims:
        elements *= d
    if dims and dims[0] % block:
        raise GgufFileError(f"{path.name}: tensor '{name}' rows of {dims[0]} are not whole {type_name} blocks")
    return type_name, elements // block * size


def check_complete(header: GgufHeader) -> None:
    """Refuse a file shorter than its tensors need (a copy cut short)."""
    size = header.path.stat().st_size
    if size < header.expected_size:
        raise GgufFileError(f"{header.path.name} is truncated: it has {size:,} bytes, its tensors need "
                            f"{header.expected_size:,}",
                            hint="copy the bundle again ('edgeslm verify BUNDLE' names damaged files)")
