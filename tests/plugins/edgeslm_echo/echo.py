"""The echo-bytes format: settings, exporter, engine and scorer (a fake model, for tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeslm.builder.exporter import ExportResult

END = 32007  # <|end|> of the Phi-3 vocabulary: the engine ends every answer with it


@dataclass(frozen=True)
class EchoSettings:
    reply: str = "Hello from a plugin."


class EchoExporter:
    def check_available(self) -> None:
        return None

    def check_settings(self, settings: EchoSettings, source) -> None:
        return None

    def estimate_output_bytes(self, source, settings: EchoSettings) -> int:
        return 4096

    def export(self, job, progress) -> ExportResult:
        (job.out_dir / "echo.json").write_text(json.dumps({"reply": job.settings.reply}), encoding="utf-8")
        return ExportResult(quantization={"method": "none"}, max_total_tokens=4096, max_prompt_tokens=4095,
                            kv_cache_bytes_per_token=0, kv_cache_dtype="none", weight_bytes=64,
                            runtime_overhead_bytes=1 << 20)


EXPORTER = EchoExporter()


class EchoEngine:
    def __init__(self, reply: str):
        self.reply = reply

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def text_decoder(self):
        return lambda token: bytes([token]).decode("latin-1") if token < 256 else ""

    def generate(self, prompt_ids: list[int], options, max_total_tokens: int) -> Iterator[int]:
        budget = max_total_tokens - len(prompt_ids)
        yield from list(self.reply.encode("utf-8"))[:budget]
        yield END

    def close(self) -> None:
        return None


def open_engine(artifact_dir: Path, candidate, host, manifest, threads=None) -> EchoEngine:
    return EchoEngine(json.loads((artifact_dir / "echo.json").read_text(encoding="utf-8"))["reply"])


def window_logits(artifact_dir: Path, windows: list[list[int]]):
    import numpy as np

    for window in windows:
        yield np.zeros((len(window) - 1, 32064), dtype=np.float32)
