"""Reading one decoder part's tensors (and the embedding table) from the memory-mapped checkpoint.

``safetensors.safe_open`` maps the shards; only the tensors a part needs are read and converted to
float32 for the torch module, so the build holds one part's weights at a time (bf16 in the file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import ModelSourceError
from .part_plan import DecoderPart


def _index(folder: Path) -> dict[str, Path]:
    """tensor name -> shard file."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: folder / shard for name, shard in weight_map.items()}
    from safetensors import safe_open

    found: dict[str, Path] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not iterable
                found[name] = shard
    return found


def read_tensors(folder: Path, names: list[str]) -> dict[str, Any]:
    from safetensors import safe_open

    where = _index(folder)
    missing = [n for n in names if n not in where]
    if missing:
        raise ModelSourceError(f"{folder}: the checkpoint has no tensor {missing[0]}"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    tensors: dict[str, Any] = {}
    by_shard: dict[Path, list[str]] = {}
    for name in names:
        by_shard.setdefault(where[name], []).append(name)
    for shard, wanted in by_shard.items():
        with safe_open(str(shard), "pt") as handle:
            for name in wanted:
                tensors[name] = handle.get_tensor(name)
    return tensors


def part_tensors(folder: Path, part: DecoderPart, config: dict) -> dict[str, Any]:
    tied = bool(config.get("tie_word_embeddings")) or "lm_head.weight" not in _index(folder)
    return read_tensors(folder, part.tensor_names(tied))


def embedding_table(folder: Path, config: dict) -> Any:
    """The token embeddings as a float32 numpy array [vocab, hidden]."""
    return read_tensors(folder, ["model.embed_tokens.weight"])["model.embed_tokens.weight"].float().numpy()
