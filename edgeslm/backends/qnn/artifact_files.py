"""Reading a QNN artifact's host-side files: graph description, embeddings, rotary tables (numpy only)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BundleError
from .kv_cache_loop import KvCacheLoop, PartRunners, Runner


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

    @property
    def takes_images(self) -> bool:
        return "vision" in self.config

    def vision_file(self, where: str) -> Path:
        """The vision encoder's model file of ``where`` (``"qdq"`` or a SoC name)."""
        if not self.takes_images:
            raise BundleError(f"{self.folder} was built from a text-only model: it has no vision encoder")
        name = self.config["vision"]["qdq"] if where == "qdq" else self.config["socs"][where].get("vision")
        if not name:
            raise BundleError(f"{self.folder} has no vision encoder for {where}")
        return self.folder / name

    def vision_options(self) -> dict[str, bool]:
        """How the encoder's HTP session is made: the a16w8 graph quantizes its input on the NPU; the float16
        one runs the float graph in the HTP's fp16 precision (artifacts from before the setting: a16w8)."""
        quantized = self.config["vision"].get("precision", "a16w8") == "a16w8"
        return {"input_quantization_on_npu": quantized, "float16": not quantized}

    def image_features(self, run: Runner, pixel_values: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
        """[image tokens, hidden] of the images, through ``run`` (a vision encoder session)."""
        from .vision_layout import image_features

        vision = self.config["vision"]
        separators = np.load(self.folder / vision["separators"])
        return image_features(run, pixel_values, image_sizes, separators, vision["crops"])

    def part_files(self, where: str) -> list[dict[str, Any]]:
        """Per decoder part: ``layers`` [start, stop], and the ``prefill``/``decode`` model files of ``where``
        (``"qdq"`` or a SoC name). Artifacts from before the decoder was parted are one part."""
        c = self.config
        table = c["qdq"] if where == "qdq" else c["socs"][where]
        if "parts" not in c:
            return [{"layers": [0, c["layers"]], "prefill": table["prefill"], "decode": table["decode"]}]
        return [{"layers": part["layers"], **files} for part, files in zip(c["parts"], table["parts"])]

    def loop(self, make_runner: Callable[[Path], Runner], where: str) -> KvCacheLoop:
        """The host loop over ``where``'s graphs (``"qdq"``: the portable QDQ graphs; else a SoC's)."""
        c = self.config
        parts = [PartRunners(range(*f["layers"]), "inputs_embeds" if f["layers"][0] == 0 else "hidden_states",
                             make_runner(self.folder / f["prefill"]), make_runner(self.folder / f["decode"]))
                 for f in self.part_files(where)]
        return KvCacheLoop(parts, self.embeddings, self.cos, self.sin, c["kv_heads"], c["head_dim"],
                           c["context_length"], c["graphs"]["prefill_tokens"])
