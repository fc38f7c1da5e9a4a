"""``edgeslm bench``: time to first token and decode speed of the chosen artifact on this device."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

FILLER = ("The os module provides a portable way of using operating system dependent functionality. "
          "Functions in this module accept paths as strings or bytes. ")


@dataclass(frozen=True)
class BenchResult:
    artifact_id: str
    device: str
    threads: int
    prompt_tokens: int
    new_tokens: int  # asked for
    generated_tokens: list[int]  # produced per run (fewer if the model stopped at its end token)
    repeats: int
    ttft_s: list[float]
    decode_tokens_per_s: list[float]

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "median_ttft_s": statistics.median(self.ttft_s),
                "median_decode_tokens_per_s": statistics.median(self.decode_tokens_per_s)}


def run_bench(llm: Any, prompt_tokens: int = 128, new_tokens: int = 64, repeats: int = 3,
              threads: int = 0) -> BenchResult:
    """Greedy generation of exactly ``new_tokens`` (no stop strings) after a ~``prompt_tokens`` prompt."""
    words = (FILLER * (prompt_tokens // 10 + 2)).split()
    while words and len(llm.engine.encode(" ".join(words))) > prompt_tokens:
        words = words[: max(1, int(len(words) * 0.9))]
    messages = [{"role": "user", "content": " ".join(words)}]
    ids = llm.prompt_ids(messages)
    ttft, speed, counts = [], [], []
    for i in range(repeats + 1):  # the first run warms caches and is not counted
        stream = llm.stream(messages, max_new_tokens=new_tokens)
        for _ in stream:
            pass
        if i:
            ttft.append(stream.result.time_to_first_token_s)
            speed.append(stream.result.decode_tokens_per_s)
            counts.append(stream.result.usage.completion_tokens)
    return BenchResult(llm.candidate.artifact.id, llm.candidate.device, threads, len(ids), new_tokens, counts,
                       repeats, ttft, speed)
