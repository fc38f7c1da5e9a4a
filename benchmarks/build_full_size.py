"""Both ONNX exporters side by side on a full-size random Phi-3.5-mini: wall time, RSS over time, size.

Makes sure the random checkpoint exists (``make_random_checkpoint.py``, in a child process), then for
each repeat runs, one after the other on the same machine:

* streaming: ``edgeslm build --target raspberrypi --model CKPT --out OUT --force --json --no-eval``
  (edgeslm's streaming exporter, the default);
* builder: the same with ``--set onnx-int4-cpu.exporter=ort-builder`` (onnxruntime-genai's builder:
  transformers loads the whole model). Skipped with ``--skip-builder`` where RAM is short (~23 GB).

``--no-eval`` on both: the comparison is of the exporters (the quality reference and scoring are the
same code on both sides and are measured in ``reference_scoring.py``). ``--with-eval`` adds a third
run, streaming with measured quality, for the whole build's peak.

Per run: wall time; RSS of the child and its descendants sampled from /proc every 0.2 s (kept as a
time series for the plot); ``ru_maxrss`` from ``os.wait4`` (the largest single process, exact);
artifact size; ``edgeslm verify``. Ratios streaming/builder in the same run. Writes the JSON and a PNG
of RSS over time for both exporters (matplotlib; benchmarks/setup_bench_env.sh installs it).

Usage: python benchmarks/build_full_size.py [--checkpoint DIR] [--out DIR] [--repeats N] [--skip-builder]
           [--with-eval] [--json-out FILE] [--plot FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ARTIFACT = "onnx-int4-cpu"
PACKAGES = ("edgeslm", "onnxruntime-genai", "onnxruntime", "onnx-ir", "onnx", "torch", "transformers")
ENSURE = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
          "from make_random_checkpoint import DEFAULT_CONFIG_DIR, make_random_checkpoint; "
          "make_random_checkpoint(DEFAULT_CONFIG_DIR, Path(sys.argv[2]))")
VARIANTS = {"streaming": ["--no-eval"], "builder": ["--no-eval", "--set", f"{ARTIFACT}.exporter=ort-builder"],
            "streaming+eval": []}


def measure(cmd: list[str], interval: float = 0.2) -> dict:
    """Run cmd; return rc, wall_s, peak tree RSS (sampled) and its time series, ru_maxrss (wait4), output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        series, done = [], threading.Event()

        def sample() -> None:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    procs = [root, *root.children(recursive=True)]
                except psutil.Error:
                    break
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                series.append((round(time.perf_counter() - start, 2), total))
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
        out.seek(0), err.seek(0)
        return {"rc": proc.returncode, "wall_s": round(wall, 2),
                "peak_rss_sampled_bytes": max((rss for _, rss in series), default=0), "rss_series": series,
                "ru_maxrss_bytes": usage.ru_maxrss * 1024, "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}


def failure_reason(rc: int) -> str:
    if rc >= 0:
        return f"exit status {rc}"
    name = signal.Signals(-rc).name
    return f"killed by {name}" + (" (likely the kernel OOM killer)" if rc == -signal.SIGKILL else "")


def host_info() -> dict:
    vm, model = psutil.virtual_memory(), platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {"cpu_count": os.cpu_count(), "cpu_model": model, "ram_total_bytes": vm.total,
            "swap_total_bytes": psutil.swap_memory().total, "platform": platform.platform(),
            "python": platform.python_version(), "packages": {p: ver(p) for p in PACKAGES}}


def medians_by(runs: list[dict], field: str, keys: tuple[str, ...]) -> dict[str, dict]:
    """Per value of ``runs[i][field]`` (successful runs only): the median of each key and the run count."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        if not run["rc"]:
            groups.setdefault(run[field], []).append(run)
    return {name: {**{k: statistics.median(r[k] for r in ok) for k in keys}, "runs": len(ok)}
            for name, ok in groups.items()}


def tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def one_run(ckpt: Path, out: Path, variant: str) -> dict:
    mem_available = psutil.virtual_memory().available
    cmd = [sys.executable, "-m", "edgeslm", "build", "--target", "raspberrypi", "--model", str(ckpt),
           "--out", str(out), "--force", "--json", *VARIANTS[variant]]
    build = measure(cmd)
    build.update(variant=variant, mem_available_before_bytes=mem_available)
    if build["rc"] != 0:
        build["failed"] = failure_reason(build["rc"])
        build["stderr_tail"] = build.pop("stderr")[-3000:]
        build.pop("stdout", None)
        return build
    build.pop("stdout")
    build["stderr_tail"] = build.pop("stderr")[-1500:]
    build["artifact_bytes"], build["artifact_files"] = tree_size(out / "artifacts" / ARTIFACT)
    manifest = json.loads((out / "manifest.json").read_text())
    build["quality"] = manifest["artifacts"][0].get("quality")
    verify = subprocess.run([sys.executable, "-m", "edgeslm", "verify", str(out)],
                            check=False, capture_output=True, text=True)
    build["verify_passed"] = verify.returncode == 0
    shutil.rmtree(out, ignore_errors=True)
    return build


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for run in runs:
        if run.get("rss_series"):
            t, rss = zip(*run["rss_series"])
            ax.plot(t, [r / 2**30 for r in rss], label=f"{run['variant']} (peak {run['peak_rss_sampled_bytes'] / 2**30:.1f} GiB, "
                    f"{run['wall_s']:.0f} s)")
    ax.axhline(4, color="grey", linestyle="--", linewidth=1, label="4 GiB goal")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("RSS of the build (GiB, process tree)")
    ax.set_title("edgeslm build --target raspberrypi, full-size Phi-3.5-mini (random bf16), ONNX int4")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def print_table(summary: dict) -> None:
    gib = 2**30
    print(f"\n{'exporter':<16}{'wall s':>9}{'peak RSS GiB':>14}{'ru_maxrss GiB':>15}{'artifact GB':>13}")
    for name, row in summary.items():
        if isinstance(row, dict) and "wall_s" in row:
            print(f"{name:<16}{row['wall_s']:>9.1f}{row['peak_rss_sampled_bytes'] / gib:>14.2f}"
                  f"{row['ru_maxrss_bytes'] / gib:>15.2f}{row['artifact_bytes'] / 1e9:>13.2f}")
    for key, value in summary.get("ratios", {}).items():
        print(f"{key}: {value}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/phi35-random"),
                    help="cache dir of the random full-size checkpoint (made if missing)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgeslm-bench-rpi.bundle")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-builder", action="store_true")
    ap.add_argument("--with-eval", action="store_true")
    ap.add_argument("--json-out", type=Path, default=HERE / "results" / "build_full_size.json")
    ap.add_argument("--plot", type=Path, default=HERE.parent / "docs" / "images" / "build_full_size_rss.png")
    args = ap.parse_args()

    subprocess.run([sys.executable, "-c", ENSURE, str(HERE), str(args.checkpoint)], check=True)
    variants = ["streaming"] + ([] if args.skip_builder else ["builder"]) + (["streaming+eval"] if args.with_eval else [])
    runs = []
    for i in range(args.repeats):
        for variant in variants:
            print(f"repeat {i + 1}/{args.repeats}: {variant} ...", flush=True)
            runs.append(one_run(args.checkpoint, args.out, variant))
            if "failed" in runs[-1]:
                print(f"  {variant} FAILED: {runs[-1]['failed']}\n{runs[-1]['stderr_tail']}", file=sys.stderr)
    keys = ("wall_s", "cpu_s", "peak_rss_sampled_bytes", "ru_maxrss_bytes", "artifact_bytes")
    summary: dict = medians_by(runs, "variant", keys)
    if "streaming" in summary and "builder" in summary:
        s, b = summary["streaming"], summary["builder"]
        summary["ratios"] = {f"streaming/builder {k}": round(s[k] / b[k], 3) for k in keys if b[k]}
    report = {"benchmark": "ONNX exporters on a full-size random Phi-3.5-mini (bf16), edgeslm build --target raspberrypi",
              "command": " ".join(sys.argv), "checkpoint": str(args.checkpoint), "host": host_info(),
              "repeats": args.repeats, "summary": summary, "runs": runs}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=1) + "\n")
    plot([r for r in runs if r is next(x for x in runs if x["variant"] == r["variant"])], args.plot)
    print_table(summary)
    print(f"\nwrote {args.json_out} and {args.plot}")
    if any("failed" in r or not r.get("verify_passed") for r in runs):
        sys.exit("a build failed or its bundle did not verify")


if __name__ == "__main__":
    main()
