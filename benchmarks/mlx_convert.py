"""MLX 4-bit (apple-silicon): edgeslm's MLX exporter against plain ``mlx_lm convert -q``.

Each run is a fresh child process measured like build_full_size.py (wall time, peak RSS of the process
tree sampled from /proc every 0.2 s, ``ru_maxrss`` from ``os.wait4``); runs alternate between the two
kinds after nothing else; medians and edgeslm/anchor ratios.
  edgeslm   the MLX exporter alone, as the build pipeline calls it: ``EXPORTER.export(ExportJob(
            load_source(CKPT), ...))`` with the recipe's ``mlx`` settings (4-bit, group 64, RTN; the
            LongRoPE fix; bits read back from the written tensors). load_source hashes the weights (sha256
            for the manifest), which plain convert does not do: the child reports that time separately.
  anchor    python -m mlx_lm convert --hf-path CKPT --mlx-path OUT -q   (4-bit, group 64)

Usage: python benchmarks/mlx_convert.py --model CKPT [--work DIR] [--repeats R] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build_full_size  # noqa: E402
from build_full_size import failure_reason, host_info, measure, medians_by, tree_size  # noqa: E402

build_full_size.PACKAGES = ("edgeslm", "mlx", "mlx-lm", "transformers")


def child_export(ckpt: str, out: Path) -> dict:
    t0 = time.perf_counter()
    from edgeslm.backends.mlx.exporter import EXPORTER
    from edgeslm.builder.exporter import ExportJob
    from edgeslm.builder.source import load_source
    from edgeslm.builder.text_windows import calibration_text
    from edgeslm.config.recipes import all_recipes
    from edgeslm.progress import NullProgress
    from edgeslm.registry import formats
    t1 = time.perf_counter()
    source = load_source(ckpt)
    t2 = time.perf_counter()
    work = out.with_name(out.name + ".work")
    shutil.rmtree(out, ignore_errors=True), shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True), work.mkdir()
    settings = all_recipes()["phi-3.5-mini-instruct"].formats["mlx"]
    result = EXPORTER.export(ExportJob(source, formats()["mlx"], settings, out, work, 4096,
                                                 calibration_text(None, None, 0)), NullProgress())
    shutil.rmtree(work, ignore_errors=True)
    return {"import_s": t1 - t0, "load_source_s": t2 - t1, "export_s": time.perf_counter() - t2,
            "bits_histogram": result.quantization["bits_histogram"]}


def one_run(kind: str, ckpt: Path, work: Path) -> dict:
    out = work / kind
    shutil.rmtree(out, ignore_errors=True)
    if kind == "edgeslm":
        cmd = [sys.executable, __file__, "--child-export", str(out), "--model", str(ckpt)]
    else:
        cmd = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(ckpt), "--mlx-path", str(out), "-q"]
    print(f"{kind}: {' '.join(cmd)}", flush=True)
    run = {"kind": kind, "command": cmd, **measure(cmd)}
    stdout, stderr = run.pop("stdout"), run.pop("stderr")
    if run["rc"]:
        run.update(failed=failure_reason(run["rc"]), stderr_tail=stderr[-3000:])
        return run
    if kind == "edgeslm":
        run["child"] = json.loads(stdout.strip().splitlines()[-1])
    run["weights_bytes"] = sum(p.stat().st_size for p in out.glob("model*.safetensors"))
    run["total_bytes"], run["files"] = tree_size(out)
    print(f"  {run['wall_s']:.1f} s, peak RSS {run['peak_rss_sampled_bytes'] / 1e9:.2f} GB (ru_maxrss "
          f"{run['ru_maxrss_bytes'] / 1e9:.2f}), weights {run['weights_bytes'] / 1e9:.3f} GB", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "mlx_convert.json"))
    ap.add_argument("--child-export", default=None)
    args = ap.parse_args()
    if args.child_export:
        print(json.dumps(child_export(args.model, Path(args.child_export))))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="mlx-bench-"))
    runs = [one_run(kind, Path(args.model), work) for _ in range(args.repeats) for kind in ("anchor", "edgeslm")]
    summary = medians_by(runs, "kind", ("wall_s", "peak_rss_sampled_bytes", "ru_maxrss_bytes", "weights_bytes",
                                         "total_bytes"))
    if "anchor" in summary and "edgeslm" in summary:
        summary["ratio_edgeslm_over_anchor"] = {key: round(summary["edgeslm"][key] / summary["anchor"][key], 3)
                                                for key in ("wall_s", "peak_rss_sampled_bytes", "weights_bytes")}
        hashing = statistics.median(r["child"]["load_source_s"] for r in runs if r["kind"] == "edgeslm" and not r["rc"])
        summary["edgeslm_hashing_s_median"] = round(hashing, 2)
    print(f"\n{'kind':<10}{'wall s':>10}{'peak RSS GB':>14}{'ru_maxrss GB':>14}{'weights GB':>12}{'runs':>6}")
    for kind in ("anchor", "edgeslm"):
        if kind in summary:
            s = summary[kind]
            print(f"{kind:<10}{s['wall_s']:>10.1f}{s['peak_rss_sampled_bytes'] / 1e9:>14.2f}"
                  f"{s['ru_maxrss_bytes'] / 1e9:>14.2f}{s['weights_bytes'] / 1e9:>12.3f}{s['runs']:>6}")
    if "ratio_edgeslm_over_anchor" in summary:
        print("edgeslm/anchor:", summary["ratio_edgeslm_over_anchor"], "| edgeslm sha256 of the source (s):",
              summary["edgeslm_hashing_s_median"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"host": host_info(), "model": args.model, "runs": runs,
                                          "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
