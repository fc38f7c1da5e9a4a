"""The model a build starts from: a local Hugging Face folder or a hub id, checked before any export.

Checks are cheap and specific: the folder exists and has ``config.json``; the weights are
safetensors whose headers parse and whose data fits in the file (a truncated download is caught
here, not forty minutes into a quantization); the architecture has a recipe. The sha256 of every
weight file is recorded for the manifest's provenance.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bundle.checksums import sha256_file
from ..errors import ModelSourceError
from ..json_files import read_json
from ..safetensors_header import read_header

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "*.py"]
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class WeightFile:
    path: str  # relative to the model folder
    size: int
    sha256: str
    parameters: int


@dataclass(frozen=True)
class SourceModel:
    """A validated local checkpoint."""

    path: Path
    name: str
    hub_id: str | None
    config: dict[str, Any]
    weight_files: tuple[WeightFile, ...] = field(default=())

    @property
    def parameter_count(self) -> int:
        return sum(w.parameters for w in self.weight_files)

    @property
    def weight_bytes(self) -> int:
        return sum(w.size for w in self.weight_files)

    @property
    def architecture(self) -> str:
        return (self.config.get("architectures") or ["?"])[0]


def locate(model: str) -> tuple[Path, str | None]:
    """Return (local folder, hub id or None). Downloads from the hub only for hub ids."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"model path {model} is a file, not a folder",
                                   hint="pass the folder that holds config.json and the *.safetensors files")
        return path.resolve(), None
    if model.startswith((".", "/", "~")) or not HUB_ID.match(model):
        raise ModelSourceError(f"model folder {model} does not exist",
                               hint="pass a local Hugging Face checkpoint folder or a hub id such as "
                                    "microsoft/Phi-3.5-mini-instruct")
    return _from_hub(model), model


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub comes with every build extra
        raise ModelSourceError(f"{repo_id}: huggingface_hub is not installed",
                               hint="pip install 'edgeslm[build-onnx]'") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=DOWNLOAD_PATTERNS, local_files_only=True))
    except Exception:  # not in the local cache: go online below
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=DOWNLOAD_PATTERNS))
    except Exception as exc:  # offline, unknown repo, gated, ...
        reason = type(exc).__name__
        raise ModelSourceError(
            f"cannot get {repo_id} from the Hugging Face hub ({reason}) and it is not in the local cache",
            hint=f"on a connected machine run 'hf download {repo_id} --local-dir DIR', "
                 f"copy DIR here and pass [[model]] DIR") from None


def load_source(model: str, hash_progress: Callable[[int], None] | None = None) -> SourceModel:
    """Locate and validate ``model``; compute checksums of its weight files."""
    path, hub_id = locate(model)
    return scan_weights(path, hub_id, read_config(path), hash_progress)


def scan_weights(path: Path, hub_id: str | None, config: dict[str, Any],
                 hash_progress: Callable[[int], None] | None = None) -> SourceModel:
    """Validate the safetensors files of a located checkpoint and checksum them."""
    weights = list_weight_files(path)
    files = []
    for weight in weights:
        params = check_safetensors(weight)
        files.append(WeightFile(str(weight.relative_to(path)), weight.stat().st_size,
                                sha256_file(weight, hash_progress), params))
    name = hub_id or path.name
    return SourceModel(path, name, hub_id, config, tuple(files))


def read_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelSourceError(f"{path} has no config.json, so it is not a Hugging Face checkpoint",
                               hint="pass the folder that holds config.json and the *.safetensors files")
    return read_json(config_path, ModelSourceError)


def list_weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, ModelSourceError).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelSourceError(f"{index} is not a valid safetensors index: it has no 'weight_map' object")
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise ModelSourceError(f"{path}: weight shard(s) listed in the index are missing: {', '.join(missing)}",
                                   hint="the download is incomplete; download the checkpoint again")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        found = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        extra = f" (found {', '.join(found[:3])}: pickle weights are not loaded, for safety)" if found else ""
        raise ModelSourceError(f"{path} has no *.safetensors weights{extra}",
                               hint="convert the checkpoint to safetensors first")
    return files


def check_safetensors(path: Path) -> int:
    """Validate a safetensors header against the file size; return the parameter count."""
    size = path.stat().st_size
    try:
        header_len, header = read_header(path)
    except (ValueError, OSError) as exc:
        raise ModelSourceError(f"{path.name} is not a valid safetensors file: {exc}",
                               hint="the file is corrupt or truncated; download it again") from None
    data_len = size - 8 - header_len
    end_max, params = 0, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= dim
            expected = count * _DTYPE_BYTES.get(info["dtype"], 0)
        except (KeyError, TypeError, ValueError):
            raise ModelSourceError(f"{path.name}: tensor '{name}' has a malformed header entry") from None
        if expected and end - start != expected:
            raise ModelSourceError(f"{path.name}: tensor '{name}' has {end - start} bytes, its shape needs {expected}")
        end_max = max(end_max, end)
        params += count
    if end_max > data_len:
        raise ModelSourceError(f"{path.name} is truncated: its header needs {end_max + 8 + header_len} bytes, "
                               f"the file has {size}", hint="the download is incomplete; download it again")
    return params
