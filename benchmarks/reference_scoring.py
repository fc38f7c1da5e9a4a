"""The source model's fp32 reference for measured quality: layer by layer (edgeslm) vs the full fp32 model.

On a full-size random Phi-3.5-mini checkpoint (``make_random_checkpoint.py``, bf16, made if missing)
and ``--windows`` x ``--tokens`` token windows of examples/eval/docs-heldout.txt, each run is a fresh
child process measured like build_full_size.py (wall time, peak RSS of the process tree sampled from
/proc every 0.2 s, ``ru_maxrss`` from ``os.wait4``):
  edgeslm       ``edgeslm.builder.measured_quality.source_window_nll``: reference_logits, one decoder layer at a
                time cast to fp32 from the memory-mapped safetensors, all windows batched
  transformers  the previous implementation: ``AutoModelForCausalLM.from_pretrained(dtype=float32)``
                (the whole model in fp32, ~15 GB) and one forward per window
Both report their per-window summed NLL; the summary gives medians, edgeslm/transformers ratios and
the largest relative NLL difference between the two (the reference must not change the numbers).
Each run also records the load average before it and the child's CPU seconds for the computation
(``time.process_time``, all threads): on a shared machine wall time inflates, CPU time much less.
A failed run (e.g. killed for memory) is recorded with its reason instead of numbers.

Usage: python benchmarks/reference_scoring.py [--checkpoint DIR] [--config-dir DIR] [--windows N]
           [--tokens T] [--repeats R] [--transformers-repeats R] [--json-out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import build_full_size  # noqa: E402
from build_full_size import failure_reason, host_info, measure, medians_by  # noqa: E402

build_full_size.PACKAGES = ("edgeslm", "torch", "transformers", "safetensors", "tokenizers")
KINDS = ("transformers", "edgeslm")
KEYS = ("wall_s", "peak_rss_sampled_bytes", "ru_maxrss_bytes", "compute_s", "compute_cpu_s")


def child(kind: str, ckpt: Path, windows_file: Path) -> dict:
    """Runs in the measured child: the per-window summed NLL of the source model, computed ``kind``'s way."""
    windows = json.loads(windows_file.read_text())
    t0 = time.perf_counter()
    if kind == "edgeslm":
        from edgeslm.builder.measured_quality import source_window_nll

        t1, cpu1 = time.perf_counter(), time.process_time()
        nll = source_window_nll(ckpt, windows)
    else:
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        t1, cpu1 = time.perf_counter(), time.process_time()
        model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
        nll = []
        with torch.inference_mode():
            for window in windows:
                ids = torch.tensor([window])
                logits = model(input_ids=ids).logits[0, :-1].double()
                nll.append(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")))
    return {"import_s": t1 - t0, "compute_s": time.perf_counter() - t1, "compute_cpu_s": time.process_time() - cpu1,
            "nll": nll}


def one_run(kind: str, ckpt: Path, windows_file: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--checkpoint", str(ckpt), "--windows-file", str(windows_file)]
    print(f"{kind}: {' '.join(cmd)}", flush=True)
    run = {"kind": kind, "command": cmd, "loadavg_before": os.getloadavg(), **measure(cmd)}
    stdout, stderr = run.pop("stdout"), run.pop("stderr")
    if run["rc"]:
        run.update(failed=failure_reason(run["rc"]), stderr_tail=stderr[-3000:])
        print(f"  FAILED: {run['failed']} after {run['wall_s']:.1f} s, peak RSS "
              f"{run['peak_rss_sampled_bytes'] / 1e9:.2f} GB", flush=True)
        return run
    result = json.loads(stdout.strip().splitlines()[-1])
    run.update(nll=result["nll"], **{k: round(result[k], 2) for k in ("import_s", "compute_s", "compute_cpu_s")})
    print(f"  {run['wall_s']:.1f} s (compute {run['compute_s']:.1f} s, CPU {run['compute_cpu_s']:.1f} s), peak RSS "
          f"{run['peak_rss_sampled_bytes'] / 1e9:.2f} GB (ru_maxrss {run['ru_maxrss_bytes'] / 1e9:.2f})", flush=True)
    return run


def summarize(runs: list[dict]) -> dict:
    summary = medians_by(runs, "kind", KEYS)
    if all(kind in summary for kind in KINDS):
        summary["ratio_edgeslm_over_transformers"] = {
            key: round(summary["edgeslm"][key] / summary["transformers"][key], 3) for key in KEYS}
        ok = {kind: next(r["nll"] for r in runs if r["kind"] == kind and not r["rc"]) for kind in KINDS}
        summary["max_relative_nll_difference"] = max(
            abs(a - b) / abs(b) for a, b in zip(ok["edgeslm"], ok["transformers"]))
    summary["failed_runs"] = [{"kind": r["kind"], "failed": r["failed"], "wall_s": r["wall_s"],
                               "peak_rss_sampled_bytes": r["peak_rss_sampled_bytes"]} for r in runs if r["rc"]]
    return summary


def print_table(summary: dict) -> None:
    print(f"\n{'kind':<14}{'wall s':>9}{'compute s':>11}{'CPU s':>9}{'peak RSS GB':>13}{'ru_maxrss GB':>14}{'runs':>6}")
    for kind in KINDS:
        if kind in summary:
            s = summary[kind]
            print(f"{kind:<14}{s['wall_s']:>9.1f}{s['compute_s']:>11.1f}{s['compute_cpu_s']:>9.1f}"
                  f"{s['peak_rss_sampled_bytes'] / 1e9:>13.2f}"
                  f"{s['ru_maxrss_bytes'] / 1e9:>14.2f}{s['runs']:>6}")
    for failed in summary["failed_runs"]:
        print(f"{failed['kind']:<14}FAILED: {failed['failed']} (peak RSS {failed['peak_rss_sampled_bytes'] / 1e9:.2f} GB)")
    if "ratio_edgeslm_over_transformers" in summary:
        print("edgeslm/transformers:", summary["ratio_edgeslm_over_transformers"])
        print(f"largest relative difference of a window's NLL: {summary['max_relative_nll_difference']:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/phi35-random"),
                    help="cache dir of the random full-size checkpoint (made if missing)")
    ap.add_argument("--config-dir", type=Path, default=REPO / "tests" / "fixtures" / "phi-3.5-mini-instruct")
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3, help="runs of the edgeslm way")
    ap.add_argument("--transformers-repeats", type=int, default=1, help="runs of the full-model way")
    ap.add_argument("--json-out", type=Path, default=HERE / "results" / "reference_scoring.json")
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--windows-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.checkpoint, args.windows_file)))
        return

    subprocess.run([sys.executable, str(HERE / "make_random_checkpoint.py"), str(args.checkpoint),
                    "--config-dir", str(args.config_dir)], check=True)
    sys.path.insert(0, str(REPO))
    from edgeslm.builder.text_windows import BuildText  # tokenizers only: the monitor stays small

    text = BuildText(REPO / "examples" / "eval" / "docs-heldout.txt", "benchmark")
    windows = text.windows(args.checkpoint / "tokenizer.json", args.windows, args.tokens)
    with tempfile.TemporaryDirectory(prefix="reference-bench-") as tmp:
        windows_file = Path(tmp) / "windows.json"
        windows_file.write_text(json.dumps(windows))
        runs = [one_run("transformers", args.checkpoint, windows_file) for _ in range(args.transformers_repeats)]
        runs += [one_run("edgeslm", args.checkpoint, windows_file) for _ in range(args.repeats)]
    summary = summarize(runs)
    print_table(summary)
    report = {"benchmark": f"fp32 source reference, {args.windows} x {args.tokens} tokens, full-size random "
                           "Phi-3.5-mini (bf16): edgeslm layer-by-layer vs transformers full fp32 model",
              "command": " ".join(sys.argv), "checkpoint": str(args.checkpoint), "host": host_info(),
              "windows": args.windows, "window_tokens": args.tokens, "runs": runs, "summary": summary}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json_out}")


if __name__ == "__main__":
    main()
