"""Reading a QNN artifact's host-side files: graph description, embeddings, rotary tables (numpy only)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BundleError
from .kv_cache_loop import KvCacheLoop, Runner


@dataclass
class QnnArtifact:
    folder: Path
    config: dict[str, Any]
    embeddings: np.ndarray
    cos: np.ndarray
    sin: np.ndarray

    @classmethod
    def open(cls, folder: Path) -> QnnArtifact:
        try:
            config = json.loads((folder / "qnn_config.json").read_text(encoding="utf-8"))
            rope = np.load(folder / "rope.npz")
            return cls(folder, config, np.load(folder / "embeddings.npy", mmap_mode="r"), rope["cos"], rope["sin"])
        except (OSError, ValueError, KeyError) as exc:
            raise BundleError(f"{folder} is not a readable qnn-context artifact: {exc}") from None

    def loop(self, make_runner: Callable[[Path], Runner], prefill: str, decode: str,
             record: dict | None = None) -> KvCacheLoop:
        c = self.config
        return KvCacheLoop(make_runner(self.folder / prefill), make_runner(self.folder / decode), self.embeddings,
                           self.cos, self.sin, c["layers"], c["kv_heads"], c["head_dim"], c["context_length"],
                           c["graphs"]["prefill_tokens"], record=record)
