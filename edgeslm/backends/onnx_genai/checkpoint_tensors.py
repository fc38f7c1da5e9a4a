"""One tensor at a time from a Hugging Face safetensors checkpoint (sharded or not), memory-mapped.

The streaming exporter never holds the model: each weight is read from the mapped file when the
ONNX writer asks for it, cast to fp32 (bf16 is widened by a 16-bit shift, exactly), used and
dropped; the page cache, not the process, owns the file pages. Every read re-checks the tensor's
byte range against the shard's current size, so a shard truncated after the build started raises
a clear error instead of a SIGBUS, and non-finite values (a corrupt shard) are refused with the
tensor's name. numpy + standard library only.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import BuildError
from ...json_files import read_json
from ...safetensors_header import read_header

# safetensors dtype -> (numpy dtype of the stored bits, widening to fp32)
_STORED = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
SUPPORTED_DTYPES = tuple(_STORED)


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


class CheckpointTensors:
    """Index of the tensors of a checkpoint folder; ``fp32(name)`` reads one."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.entries: dict[str, TensorEntry] = {}
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(read_json(index, BuildError).get("weight_map", {}).values()))
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
        for name in files:
            self._index(self.folder / name)
        self._maps: dict[Path, mmap.mmap] = {}

    def _index(self, path: Path) -> None:
        try:
            header_len, header = read_header(path)
        except (ValueError, OSError) as exc:
            raise BuildError(f"{path.name}: not a readable safetensors shard: {exc}",
                             hint="the checkpoint is corrupt or truncated; download it again") from None
        base = 8 + header_len
        for tensor, info in header.items():
            try:
                start, end = info["data_offsets"]
                entry = TensorEntry(path, str(info["dtype"]), tuple(int(d) for d in info["shape"]),
                                    base + int(start), base + int(end))
            except (KeyError, TypeError, ValueError):
                raise BuildError(f"{path.name}: tensor '{tensor}' has a malformed header entry") from None
            self.entries[tensor] = entry

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def check_dtypes(self, names: list[str]) -> None:
        """Refuse, before any work, tensors missing or stored in a dtype the exporter does not read."""
        for name in names:
            entry = self._entry(name)
            if entry.dtype not in _STORED:
                raise BuildError(f"{entry.file.name}: tensor '{name}' is {entry.dtype}; the streaming ONNX exporter "
                                 f"reads {', '.join(SUPPORTED_DTYPES)}",
                                 hint="convert the checkpoint to bf16/fp16 safetensors first")

    def fp32(self, name: str) -> np.ndarray:
        """The tensor as a new fp32 array (C order)."""
        entry = self._entry(name)
        stored = _STORED.get(entry.dtype)
        if stored is None:
            self.check_dtypes([name])
        count = int(np.prod(entry.shape, dtype=np.int64))
        if entry.end - entry.start != count * np.dtype(stored).itemsize:
            raise BuildError(f"{entry.file.name}: tensor '{name}' has {entry.end - entry.start} bytes, its shape "
                             f"{list(entry.shape)} needs {count * np.dtype(stored).itemsize}",
                             hint="the checkpoint is corrupt; download it again")
        raw = np.frombuffer(self._map(entry.file, entry.end), dtype=stored, count=count, offset=entry.start)
        if stored is np.uint16:
            values = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            values = raw.astype(np.float32)
        values = values.reshape(entry.shape)
        if not np.isfinite(values).all():
            raise BuildError(f"{entry.file.name}: tensor '{name}' holds NaN or infinite values",
                             hint="the checkpoint is corrupt; download it again")
        return values

    def _entry(self, name: str) -> TensorEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise BuildError(f"{self.folder.name}: the checkpoint has no tensor '{name}'",
                             hint="the checkpoint is incomplete or not a Phi-3 checkpoint")
        return entry

    def _map(self, path: Path, needed_end: int) -> mmap.mmap:
        size = path.stat().st_size if path.exists() else -1
        if size < needed_end:
            raise BuildError(f"{path.name} is truncated: it has {max(size, 0)} bytes, its header needs {needed_end}",
                             hint="the shard changed or was cut short during the build; download it again")
        mapped = self._maps.get(path)
        if mapped is None or len(mapped) < needed_end:
            with open(path, "rb") as fh:
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[path] = mapped
        return mapped

    def close(self) -> None:
        for mapped in self._maps.values():
            try:
                mapped.close()
            except BufferError:  # an array still views it; the map is freed with that array
                pass
        self._maps.clear()
