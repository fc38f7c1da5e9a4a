"""Measured quality: perplexity of each artifact against the source checkpoint on the same windows.

Never trust a converter: every artifact built with an evaluation text gets its perplexity measured
next to the source model's (fp32, transformers) on identical token windows, and the manifest
records both and the relative change.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

from ..bundle.manifest import Quality
from ..errors import UsageError
from ..formats import FormatSpec
from ..progress import Progress


def token_windows(tokenizer_json: Path, text: str, count: int, length: int) -> list[list[int]]:
    """``count`` consecutive, non-overlapping windows of ``length`` token ids from ``text``."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tokenizer_json)).encode(text, add_special_tokens=False).ids
    windows = [ids[i * length:(i + 1) * length] for i in range(count)]
    windows = [w for w in windows if len(w) == length]
    if len(windows) < count:
        raise UsageError(f"the evaluation text has {len(ids)} tokens: too short for {count} windows of {length}",
                         hint="pass a longer --eval-text or fewer --eval-windows")
    return windows


def perplexity(nll_sums: list[float], windows: list[list[int]]) -> float:
    predicted = sum(len(w) - 1 for w in windows)
    return math.exp(sum(nll_sums) / predicted)


def source_window_nll(model_dir: Path, windows: list[list[int]]) -> list[float]:
    """The source checkpoint's summed NLL per window, in float32 with transformers."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    totals = []
    with torch.inference_mode():
        for window in windows:
            ids = torch.tensor([window])
            logits = model(input_ids=ids).logits[0, :-1].double()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
            totals.append(float(nll))
    del model
    return totals


def artifact_window_nll(fmt: FormatSpec, artifact_dir: Path, windows: list[list[int]]) -> list[float]:
    scoring = importlib.import_module(f"edgeslm.backends.{fmt.backend}.scoring")
    return scoring.window_nll(artifact_dir, windows)


@dataclass(frozen=True)
class QualityRequest:
    text_path: Path
    windows: int = 16
    window_tokens: int = 512


def measure_quality(request: QualityRequest, source_dir: Path, fmt: FormatSpec, artifact_dir: Path,
                    progress: Progress) -> Quality:
    try:
        text = request.text_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the evaluation text {request.text_path}: {exc}") from None
    windows = token_windows(source_dir / "tokenizer.json", text, request.windows, request.window_tokens)
    with progress.task(f"{fmt.name}: perplexity of the source (fp32) on {len(windows)} windows"):
        source_ppl = perplexity(source_window_nll(source_dir, windows), windows)
    with progress.task(f"{fmt.name}: perplexity of the artifact on the same windows"):
        artifact_ppl = perplexity(artifact_window_nll(fmt, artifact_dir, windows), windows)
    return Quality(metric="perplexity", dataset=request.text_path.name, windows=len(windows),
                   window_tokens=request.window_tokens, source=round(source_ppl, 4),
                   artifact=round(artifact_ppl, 4), relative_change=round((artifact_ppl - source_ppl) / source_ppl, 5))
