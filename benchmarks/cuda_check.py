"""Run a bundle's CUDA ONNX artifact on a real NVIDIA GPU: greedy answer, perplexity against the gate.

The Jetson check on any NVIDIA GPU (the CUDA graph is the same on x86_64 and Jetson): needs
onnxruntime-genai-cuda (and its onnxruntime-gpu) importable. Steps:

1. ``edgeslm.load(bundle, device="gpu")``: the selection must place ``onnx-int4-cuda`` on the GPU;
2. a greedy chat answer (must end at <|end|>, not at the token limit);
3. perplexity of the artifact, run by onnxruntime-genai's CUDA provider, on the evaluation windows the
   build used (``--eval-text``, ``--windows`` x ``--window-tokens``), against the manifest's source
   perplexity and the recipe's limit (``quality.max_relative_change``).

Prints one JSON object. Usage: python benchmarks/cuda_check.py BUNDLE --eval-text FILE [--windows 4]
[--window-tokens 512]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARTIFACT = "onnx-int4-cuda"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--eval-text", type=Path, required=True)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--window-tokens", type=int, default=512)
    args = ap.parse_args()

    import onnxruntime_genai as og

    import edgeslm
    from edgeslm.backends.log_likelihood import nll_per_window
    from edgeslm.backends.onnx_genai import scoring
    from edgeslm.builder.text_windows import BuildText

    report: dict = {"onnxruntime_genai": og.__version__}
    try:
        import onnxruntime as ort

        report["onnxruntime"], report["providers"] = ort.__version__, ort.get_available_providers()
    except ImportError:
        pass
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    quality = next(a for a in manifest["artifacts"] if a["format"] == ARTIFACT)["quality"]
    with edgeslm.load(args.bundle, device="gpu") as llm:
        chosen = llm.selection.chosen
        report["selected"] = {"artifact": chosen.artifact.format, "device": chosen.device, "summary": chosen.summary,
                              "rejected": [f"{r.artifact_id}: {r.reason}" for r in llm.selection.rejected]}
        start = time.perf_counter()
        result = llm.chat([{"role": "user", "content": "What does os.path.join do?"}], max_new_tokens=200)
        report["answer"] = {"text": result.text, "tokens": result.usage.completion_tokens,
                            "finish_reason": result.finish_reason, "wall_s": round(time.perf_counter() - start, 3),
                            "decode_tok_s": result.decode_tokens_per_s}
    artifact = args.bundle / "artifacts" / ARTIFACT
    windows = BuildText(args.eval_text, "--eval-text").windows(artifact / "tokenizer.json", args.windows,
                                                               args.window_tokens)
    nll = nll_per_window(scoring.window_logits(artifact, windows), windows)
    ppl = math.exp(sum(nll) / sum(len(w) - 1 for w in windows))
    change = (ppl - quality["source"]) / quality["source"]
    report["perplexity"] = {"scored_on": scoring.scored_on(artifact), "gpu": ppl, "source": quality["source"],
                            "cpu_at_build": quality["artifact"], "relative_change": change,
                            "limit": quality["max_relative_change"], "within_gate": change <= quality["max_relative_change"]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
