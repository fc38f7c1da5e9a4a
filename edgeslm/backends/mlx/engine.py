"""Device side of the MLX format: mlx-lm's ``generate_step`` (what ``stream_generate`` runs) on Metal.

The runtime renders the chat template and hands over token ids; tokens stream back one at a time
and the runtime stops on the manifest's stop ids. Tokenization uses the artifact's tokenizer.json
with the ``tokenizers`` package. On Linux, ``mlx[cpu]`` runs the same code on the CPU (slowly):
the runtime's selection only picks this engine there when asked with ``--artifact``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import BackendMissingError
from ...runtime.generation import GenerationOptions
from ...runtime.tokenizer_json import TokenizerJson
from .model_loading import load_mlx_model

if TYPE_CHECKING:
    from ...bundle.manifest import Manifest
    from ...runtime.host_probe import HostProfile
    from ...runtime.selection import Candidate

PREFILL_STEP = 512  # prompt tokens per forward pass while filling the KV cache


class MlxEngine:
    def __init__(self, artifact_dir: Path):
        try:
            import mlx.core as mx
            from mlx_lm.generate import generate_step
            from mlx_lm.sample_utils import make_sampler
        except ImportError:
            raise BackendMissingError("mlx-lm is not installed", hint="pip install 'edgeslm[mlx]'") from None
        self._mx, self._generate_step, self._make_sampler = mx, generate_step, make_sampler
        self.model = load_mlx_model(artifact_dir)
        self.tokenizer = TokenizerJson(artifact_dir / "tokenizer.json")
        self.encode, self.text_decoder = self.tokenizer.encode, self.tokenizer.text_decoder

    def generate(self, prompt_ids: list[int], options: GenerationOptions, max_total_tokens: int) -> Iterator[int]:
        mx = self._mx
        if options.greedy:
            sampler = self._make_sampler(temp=0.0)
        else:
            if options.seed is not None:
                mx.random.seed(options.seed)
            sampler = self._make_sampler(temp=options.temperature, top_p=options.top_p if options.top_p < 1 else 0.0,
                                         top_k=options.top_k)
        steps = self._generate_step(mx.array(prompt_ids), self.model, max_tokens=max(1, max_total_tokens - len(prompt_ids)),
                                    sampler=sampler, prefill_step_size=PREFILL_STEP)
        try:
            for token, _logprobs in steps:
                yield int(token)
        finally:
            steps.close()  # drops the KV cache at once, also when the caller stops early

    def close(self) -> None:
        self.model = None


def open_engine(artifact_dir: Path, candidate: Candidate, host: HostProfile, manifest: Manifest,
                threads: int | None = None) -> MlxEngine:
    return MlxEngine(artifact_dir)
