"""One tensor at a time from a Hugging Face safetensors checkpoint (sharded or not).

The streaming exporter never holds the model: each weight is read (positioned reads into a fresh
buffer) when the ONNX writer asks for it, cast to fp32 (bf16 is widened by a 16-bit shift, exactly),
used and dropped. Reads, not a memory map: mapped pages that were touched count in the process's
resident set until unmapped, so mapping the 7.6 GB checkpoint showed a 5.7 GB RSS for a job whose
working set is under 1 GB; read() leaves them in the page cache, which the kernel reclaims. Every
read checks the tensor's byte range against the shard's current size, so a shard truncated after the
build started raises a clear error, and non-finite values (a corrupt shard) are refused with the
tensor's name. numpy + standard library only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import BuildError
from ...json_files import read_json
from ...safetensors_header import read_header

# safetensors dtype -> (numpy dtype of the stored bits, widening to fp32)
_STORED = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
SUPPORTED_DTYPES = tuple(_STORED)


def _widen(raw: np.ndarray) -> np.ndarray:
    """Stored values as fp32 (bf16, kept as uint16 bits, is widened exactly by a 16-bit shift)."""
    return (raw.astype(np.uint32) << 16).view(np.float32) if raw.dtype == np.uint16 else raw.astype(np.float32)


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
        self._files: dict[Path, int] = {}  # open file descriptors by shard

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

    def check(self, expected: dict[str, tuple[int, ...]]) -> None:
        """Refuse, before any work, tensors missing, of another shape than ``expected``, or stored in a
        dtype the exporter does not read."""
        self.check_dtypes(list(expected))
        for name, shape in expected.items():
            if self._entry(name).shape != tuple(shape):
                raise BuildError(f"tensor '{name}' has shape {list(self._entry(name).shape)}, the config.json "
                                 f"needs {list(shape)}", hint="the config does not belong to these weights")

    def check_dtypes(self, names: list[str]) -> None:
        """Refuse tensors missing or stored in a dtype the exporter does not read."""
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
        values = _widen(self._read(entry, stored, count)).reshape(entry.shape)
        if not np.isfinite(values).all():
            raise BuildError(f"{entry.file.name}: tensor '{name}' holds NaN or infinite values",
                             hint="the checkpoint is corrupt; download it again")
        return values

    def fp32_rows(self, name: str, rows) -> np.ndarray:
        """Rows of a 2-D tensor (an embedding lookup) without reading the rest of it."""
        entry = self._entry(name)
        stored = _STORED.get(entry.dtype)
        if stored is None or len(entry.shape) != 2:
            self.check_dtypes([name])
            raise BuildError(f"tensor '{name}' is not a 2-D table")
        width = entry.shape[1] * np.dtype(stored).itemsize
        picked = [self._read(entry, stored, entry.shape[1], int(row) * width) for row in np.asarray(rows).reshape(-1)]
        return _widen(np.stack(picked) if picked else np.zeros((0, entry.shape[1]), dtype=stored))

    def fp32_row_range(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of a 2-D tensor in one read (a writer streaming a large table in slices)."""
        entry = self._entry(name)
        stored = _STORED.get(entry.dtype)
        if stored is None or len(entry.shape) != 2:
            self.check_dtypes([name])
            raise BuildError(f"tensor '{name}' is not a 2-D table")
        cols = entry.shape[1]
        values = _widen(self._read(entry, stored, (stop - start) * cols, start * cols * np.dtype(stored).itemsize))
        if not np.isfinite(values).all():
            raise BuildError(f"{entry.file.name}: tensor '{name}' holds NaN or infinite values",
                             hint="the checkpoint is corrupt; download it again")
        return values.reshape(stop - start, cols)

    def _entry(self, name: str) -> TensorEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise BuildError(f"{self.folder.name}: the checkpoint has no tensor '{name}'",
                             hint="the checkpoint is incomplete or not a Phi-3 checkpoint")
        return entry

    def _read(self, entry: TensorEntry, stored, count: int, skip: int = 0) -> np.ndarray:
        """``count`` values of dtype ``stored`` at ``skip`` bytes into the tensor's data."""
        size = entry.file.stat().st_size if entry.file.exists() else 0
        if size < entry.end:
            raise BuildError(f"{entry.file.name} is truncated: it has {size} bytes, its header needs {entry.end}",
                             hint="the shard changed or was cut short during the build; download it again")
        handle = self._files.get(entry.file)
        if handle is None:
            handle = self._files[entry.file] = os.open(entry.file, os.O_RDONLY)
        out = np.empty(count, dtype=stored)
        view, offset, done = memoryview(out).cast("B"), entry.start + skip, 0
        while done < len(view):
            got = os.preadv(handle, [view[done:]], offset + done)
            if got <= 0:
                raise BuildError(f"{entry.file.name} is truncated: reading tensor data at byte {offset + done} failed",
                                 hint="the shard changed or was cut short during the build; download it again")
            done += got
        return out

    def close(self) -> None:
        for handle in self._files.values():
            os.close(handle)
        self._files.clear()
