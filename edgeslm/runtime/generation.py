"""Generation options, results and the engine protocol shared by every backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ..errors import ContextLengthError, UsageError

__all__ = ["ContextLengthError", "GenerationOptions", "GenerationResult", "Usage", "Engine"]


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k limit
    seed: int | None = None
    stop: tuple[str, ...] = ()  # extra stop strings (the manifest's stop tokens always apply)

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not 0.0 <= self.temperature <= 5.0:
            raise UsageError(f"temperature must be between 0 and 5, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise UsageError(f"top_k must be a non-negative integer, got {self.top_k!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise UsageError(f"seed must be a non-negative integer, got {self.seed!r}")
        if any(not s for s in self.stop):
            raise UsageError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str  # stop | length | cancelled
    usage: Usage
    time_to_first_token_s: float
    decode_tokens_per_s: float
    total_s: float
    artifact_id: str
    device: str  # cpu | gpu | npu, or remote (the cloud fallback answered)
    model: str = ""  # the remote model that answered ("" when a local artifact of the bundle did)


class Engine(Protocol):
    """A loaded artifact. ``generate`` yields token ids and stops when told to (generator close)."""

    def encode(self, text: str) -> list[int]: ...

    def text_decoder(self) -> Callable[[int], str]:
        """A fresh incremental decoder: token id -> the text it adds."""

    def generate(self, prompt_ids: list[int], options: GenerationOptions, max_total_tokens: int) -> Iterator[int]: ...

    def close(self) -> None: ...
