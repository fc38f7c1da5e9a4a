"""Measured quality: every artifact scored against its source checkpoint on the same token windows.

Never trust a converter. Before any export the build computes the source's reference on a few windows
of the evaluation text (by default the built-in WikiText-2 slice, 4 windows of 512 tokens): its
summed NLL per window and its log-probabilities, which are kept in memory-mapped files in the build's
work folder. The reference is computed in float32 one decoder layer at a time from the memory-mapped
checkpoint (``reference_logits``), so it stays far below the exporters' memory peak even at 3.8B.
Each artifact is then scored by its backend's engine on the same windows, which yields perplexity and
the mean per-token KL divergence KL(source ‖ artifact). A perplexity more than the recipe's threshold
above the source fails the build unless ``--allow-quality-loss`` lets it through (and says so in the
manifest).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backend import FormatSpec
from ..bundle.manifest import Quality
from ..errors import BuildError, EdgeslmError, QualityError
from ..registry import backend_of
from .text_windows import BuildText


@dataclass(frozen=True)
class QualityRequest:
    """What the command line asks for; ``None`` fields take the recipe's ``[quality]`` values."""

    text_path: Path | None = None  # None: the built-in evaluation text
    windows: int | None = None
    window_tokens: int | None = None
    allow_loss: bool = False
    skip: bool = False  # --no-eval
    vision_eval: Path | None = None  # image-question folder for vision models (None: the built-in vision-dev)


@dataclass(frozen=True)
class EvaluationPlan:
    text: BuildText
    windows: list[list[int]]
    window_tokens: int
    max_increase: float  # relative perplexity increase that fails the build
    allow_loss: bool

    @property
    def predicted_tokens(self) -> int:
        return sum(len(w) - 1 for w in self.windows)


def perplexity(nll_sums: list[float], windows: list[list[int]]) -> float:
    return math.exp(sum(nll_sums) / sum(len(w) - 1 for w in windows))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


TORCH_REFERENCE = "torch-fp32-layerwise"  # builder.reference_logits: transformers' Phi3 maths, checked against it


def torch_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "safetensors"))


def source_logits(model_dir: Path, config: dict, windows: list[list[int]], work_dir: Path) -> tuple[str, Iterator]:
    """(name of the reference, per window the source's fp32 logits [n, vocab]).

    With torch installed: ``reference_logits`` (fp32, one layer at a time, the maths of transformers'
    Phi3ForCausalLM). Without (the torch-free ``build-onnx`` install): an unquantized export by the
    streaming ONNX exporter, run with onnxruntime one layer at a time (``onnx_genai.reference_segments``).
    """
    if torch_available():
        from .reference_logits import reference_logits

        return TORCH_REFERENCE, reference_logits(Path(model_dir), config, windows)
    from ..backends.onnx_genai import reference_segments

    return reference_segments.NAME, reference_segments.reference_logits(Path(model_dir), config, windows, work_dir)


def source_window_nll(model_dir: Path, windows: list[list[int]], work_dir: Path | None = None) -> list[float]:
    """The source checkpoint's summed NLL per window (float32, layer by layer: ``source_logits``)."""
    import json
    import tempfile

    from ..backends.log_likelihood import nll_per_window

    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
        _, logits = source_logits(Path(model_dir), config, windows, Path(scratch))
        return nll_per_window((window_logits[:-1] for window_logits in logits), windows)


class SourceReference:
    """The source model's NLL per window and log-probabilities (float32, on disk) on the plan's windows."""

    def __init__(self, nll: list[float], logprob_files: list[Path], name: str = TORCH_REFERENCE):
        self.nll = nll
        self.logprob_files = logprob_files
        self.name = name

    @classmethod
    def compute(cls, model_dir: Path, config: dict, plan: EvaluationPlan, work_dir: Path) -> SourceReference:
        """Computed in a child process: torch's allocator and onnxruntime keep what they took until the
        process ends, and the build's memory peak comes later, when the artifacts are scored."""
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(1) as pool:  # leaving the block terminates the child,
            # also on Ctrl-C or SIGTERM (turned into KeyboardInterrupt by the CLI)
            try:
                nll, files, name = pool.apply(_reference_files, (Path(model_dir), config, plan.windows,
                                                                 Path(work_dir)))
            except EdgeslmError:
                raise
            except Exception as exc:  # the child's ValueError/RuntimeError/MemoryError, re-raised here
                raise BuildError(f"the source reference failed: {type(exc).__name__}: {exc}",
                                 hint="pass [[no_eval]] to build without measuring quality") from None
        return cls(nll, files, name)

    def logprobs(self, index: int) -> np.ndarray:
        return np.load(self.logprob_files[index], mmap_mode="r")


def _reference_files(model_dir: Path, config: dict, windows: list[list[int]],
                     work_dir: Path) -> tuple[list[float], list[Path], str]:
    """The source's NLL per window and log-probability files (in ``work_dir``), and the reference's name."""
    name, source = source_logits(model_dir, config, windows, work_dir)
    nll, files = [], []
    for index, (window, logits) in enumerate(zip(windows, source)):
        logprobs = log_softmax(logits[:-1])
        nll.append(float(-logprobs[np.arange(len(window) - 1), window[1:]].sum()))
        path = work_dir / f"reference-window-{index}.npy"
        np.save(path, logprobs.astype(np.float32))
        files.append(path)
    return nll, files, name


def artifact_logits(fmt: FormatSpec, artifact_dir: Path, windows: list[list[int]]) -> Iterator[np.ndarray]:
    """Per window, the artifact's logits for positions 0..n-2 (its backend's ``scoring.window_logits``)."""
    return backend_of(fmt).scorer().window_logits(artifact_dir, windows)


def score_artifact(plan: EvaluationPlan, reference: SourceReference, fmt: FormatSpec, artifact_dir: Path) -> Quality:
    """Perplexity and KL of the artifact next to the source's; raises QualityError over the threshold."""
    nll, kl_sum = [], 0.0
    for index, (window, logits) in enumerate(zip(plan.windows, artifact_logits(fmt, artifact_dir, plan.windows))):
        logprobs = log_softmax(np.asarray(logits)[:len(window) - 1])
        nll.append(float(-logprobs[np.arange(len(window) - 1), window[1:]].sum()))
        source = np.asarray(reference.logprobs(index), dtype=np.float64)
        kl_sum += float((np.exp(source) * (source - logprobs)).sum())
    source_ppl = perplexity(reference.nll, plan.windows)
    artifact_ppl = perplexity(nll, plan.windows)
    change = (artifact_ppl - source_ppl) / source_ppl
    scoring = backend_of(fmt).scorer()
    scored_on = scoring.scored_on(artifact_dir) if hasattr(scoring, "scored_on") else ""
    within = change <= plan.max_increase
    if not within and not plan.allow_loss:
        raise QualityError(
            f"{fmt.name}: perplexity {artifact_ppl:.3f} is {change:+.2%} against the source's {source_ppl:.3f}, "
            f"more than the recipe's limit of +{plan.max_increase:.0%} (on {len(plan.windows)}×{plan.window_tokens} "
            f"tokens of {plan.text.label})",
            hint="pass [[allow_quality_loss]] to keep it anyway (the manifest records that), or change the recipe")
    return Quality(metric="perplexity", dataset=plan.text.label, windows=len(plan.windows),
                   window_tokens=plan.window_tokens, source=round(source_ppl, 4), artifact=round(artifact_ppl, 4),
                   relative_change=round(change, 5), dataset_sha256=plan.text.sha256(),
                   kl_divergence=round(kl_sum / plan.predicted_tokens, 6), max_relative_change=plan.max_increase,
                   within_limit=within, allowed_loss=not within, scored_on=scored_on,
                   reference=reference.name)
