"""Benchmark ``edgeslm build --target raspberrypi`` on a full-size random Phi-3.5-mini checkpoint.

Makes sure the random checkpoint exists (``make_random_checkpoint.py``, run in a child process so
that torch is never imported here and this monitor stays small next to a ~23 GB build), then for
each repeat:

* anchor: a child process loads every tensor of the checkpoint into memory with safetensors
  (``safe_open`` + ``get_tensor().clone()``, all kept; a shard's mmap pages count while it is open);
* build: ``edgeslm build --target raspberrypi --model CKPT --out OUT --force --json``, then
  ``edgeslm verify OUT``, artifact size and file count of ``OUT/artifacts/onnx-int4-cpu``.

For both, wall time and peak RSS are measured the same way: /proc is sampled every 0.2 s and the
RSS of the child and all its descendants is summed (shared pages count once per process), and
``ru_maxrss`` comes from ``os.wait4`` of the child (the largest single process, exact). Ratios
build/anchor put the numbers in proportion. Medians over repeats go to the JSON file.

Usage: python benchmarks/build_full_size.py [--checkpoint DIR] [--out DIR] [--repeats N]
           [--keep-bundle] [--json-out FILE]
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
PACKAGES = ("edgeslm", "onnxruntime-genai", "onnxruntime", "onnx", "torch", "transformers", "safetensors")
ENSURE = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
          "from make_random_checkpoint import DEFAULT_CONFIG_DIR, make_random_checkpoint; "
          "make_random_checkpoint(DEFAULT_CONFIG_DIR, Path(sys.argv[2]))")
ANCHOR = """import json, sys, time
from pathlib import Path
from safetensors import safe_open
start, tensors, nbytes = time.perf_counter(), {}, 0
for shard in sorted(Path(sys.argv[1]).glob('*.safetensors')):
    with safe_open(shard, 'pt') as f:
        for k in f.keys():
            tensors[k] = f.get_tensor(k).clone()
            nbytes += tensors[k].nbytes
print(json.dumps({'bytes': nbytes, 'tensors': len(tensors), 'load_s': time.perf_counter() - start}))
"""


def measure(cmd: list[str], interval: float = 0.2) -> dict:
    """Run cmd; return rc, wall_s, peak tree RSS (sampled), ru_maxrss (wait4), stdout, stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        peak, done = [0], threading.Event()

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
                peak[0] = max(peak[0], total)
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
        out.seek(0), err.seek(0)
        return {"rc": proc.returncode, "wall_s": round(wall, 2), "peak_rss_sampled_bytes": peak[0],
                "ru_maxrss_bytes": usage.ru_maxrss * 1024, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


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


def one_run(ckpt: Path, out: Path) -> dict:
    mem_available = psutil.virtual_memory().available
    anchor = measure([sys.executable, "-c", ANCHOR, str(ckpt)])
    if anchor["rc"] != 0:
        raise SystemExit(f"anchor load failed ({failure_reason(anchor['rc'])}):\n{anchor['stderr'][-3000:]}")
    anchor.update(json.loads(anchor.pop("stdout")))
    del anchor["stderr"]
    cmd = [sys.executable, "-m", "edgeslm", "build", "--target", "raspberrypi", "--model", str(ckpt),
           "--out", str(out), "--force", "--json"]
    build = measure(cmd)
    run = {"anchor": anchor, "build": build, "mem_available_before_bytes": mem_available}
    if build["rc"] != 0:
        build["failed"] = failure_reason(build["rc"])
        return run
    build["result"] = json.loads(build.pop("stdout"))
    build["stderr_tail"] = build.pop("stderr")[-2000:]
    build["artifact_bytes"], build["artifact_files"] = tree_size(out / "artifacts" / ARTIFACT)
    verify = subprocess.run([sys.executable, "-m", "edgeslm", "verify", str(out)],
                            check=False, capture_output=True, text=True)
    build["verify_passed"], build["verify_output"] = verify.returncode == 0, verify.stdout.strip()[-1000:]
    for key in ("wall_s", "peak_rss_sampled_bytes", "ru_maxrss_bytes"):
        build[f"ratio_{key}"] = round(build[key] / anchor[key], 2) if anchor[key] else None
    return run


def print_table(runs: list[dict], med: dict) -> None:
    gb = 1e9
    print(f"\n{'run':<8}{'metric':<22}{'build':>12}{'anchor (load)':>16}{'ratio':>9}")
    for i, r in enumerate([*runs, {"build": med["build"], "anchor": med["anchor"]}]):
        b, a, label = r["build"], r["anchor"], str(i + 1) if i < len(runs) else "median"
        for key, name, scale, unit in (("wall_s", "wall time", 1, "s"),
                                       ("peak_rss_sampled_bytes", "peak RSS (tree, 0.2s)", gb, "GB"),
                                       ("ru_maxrss_bytes", "ru_maxrss (wait4)", gb, "GB")):
            bv = f"{b[key] / scale:.2f} {unit}" if key in b else "-"
            ratio = f"{b[key] / a[key]:.2f}x" if key in b and a.get(key) else "-"
            print(f"{label:<8}{name:<22}{bv:>12}{a[key] / scale:>13.2f} {unit:<2}{ratio:>9}")
    last = runs[-1]["build"]
    print(f"\ncheckpoint tensors read: {runs[-1]['anchor']['bytes'] / gb:.2f} GB")
    if "artifact_bytes" in last:
        print(f"artifact {ARTIFACT}: {last['artifact_bytes'] / gb:.2f} GB in {last['artifact_files']} files; "
              f"verify {'passed' if last['verify_passed'] else 'FAILED'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/phi35-random-full"),
                    help="cache dir of the random full-size checkpoint (made if missing)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgeslm-bench-rpi.bundle")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--keep-bundle", action="store_true", help="do not delete the built bundle afterwards")
    ap.add_argument("--json-out", type=Path, default=HERE / "results" / "build_full_size.json")
    args = ap.parse_args()

    subprocess.run([sys.executable, "-c", ENSURE, str(HERE), str(args.checkpoint)], check=True)
    runs, failed = [], None
    for i in range(args.repeats):
        print(f"repeat {i + 1}/{args.repeats}: anchor load, then build ...", flush=True)
        runs.append(one_run(args.checkpoint, args.out))
        if "failed" in runs[-1]["build"]:
            failed = runs[-1]["build"]
            break
    ok = [r for r in runs if "failed" not in r["build"]]
    keys = ("wall_s", "peak_rss_sampled_bytes", "ru_maxrss_bytes")
    med = {part: {k: statistics.median(r[part][k] for r in (ok if part == "build" else runs)) for k in keys}
           for part in ("anchor", "build")} if ok else {"anchor": {}, "build": {}}
    report = {"benchmark": "edgeslm build --target raspberrypi, full-size random Phi-3.5-mini (bf16)",
              "command": " ".join(sys.argv), "checkpoint": str(args.checkpoint), "host": host_info(),
              "repeats_requested": args.repeats, "status": "failed" if failed else "ok",
              "failure": failed and failed["failed"], "runs": runs, "median": med}
    if failed:  # keep what we know: the stderr tail, no made-up numbers
        failed["stderr_tail"] = failed.pop("stderr")[-4000:]
        failed.pop("stdout", None)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=2) + "\n")
    if not args.keep_bundle:
        shutil.rmtree(args.out, ignore_errors=True)
    if failed:
        print(f"build FAILED: {failed['failed']} after {failed['wall_s']} s, peak tree RSS "
              f"{failed['peak_rss_sampled_bytes'] / 1e9:.2f} GB\n--- stderr tail ---\n{failed['stderr_tail']}",
              file=sys.stderr)
        sys.exit(1)
    print_table(runs, med)
    print(f"\nwrote {args.json_out}")
    if not all(r["build"]["verify_passed"] for r in runs):
        sys.exit("edgeslm verify failed on the built bundle")


if __name__ == "__main__":
    main()
