"""Full-size Phi-3.5-vision → ONNX (phi3v) build: wall time, RSS over time, artifact size by part.

Makes sure the random full-size Phi-3.5-vision checkpoint exists (``make_random_checkpoint.py`` with the
real config of ``tests/fixtures/phi-3.5-vision-instruct``, in a child process: 4.15 B parameters, bf16,
8.3 GB), then runs

    edgeslm build --target cpu-x86_64 --model CKPT --out OUT --no-eval --force --json

as a subprocess, measured as ``build_full_size.py`` measures the Phi-3.5-mini build (its ``measure``:
RSS of the process tree sampled from /proc every 0.2 s, ``ru_maxrss`` from ``os.wait4``, wall and CPU
time). ``--no-eval``: the build's quality check runs the fp32 torch reference of the 4.2 B model on the
recipe's 4 × 512 text tokens *and* on the 118 image questions of ``edgeslm:vision-dev`` (each one a CLIP
pass on up to 5 crops plus a prefill of ~800 tokens in fp32 on 2 cores), which would take hours here;
random weights have no quality to measure anyway. The build's own export is what is measured.

Artifact size per part (``text.onnx`` + ``.data``, ``vision.onnx`` + ``.data``, ``embedding.onnx`` +
``.data``, the rest: genai config, tokenizer) against Microsoft's own ONNX int4 CPU export of
Phi-3.5-vision-instruct (``microsoft/Phi-3.5-vision-instruct-onnx``, cpu-int4-rtn-block-32-acc-level-4):
3.22 GB in all, text 2.33, vision 0.445, embedding 0.394 GB. ``edgeslm verify`` is run on the bundle.
The bundle is kept (``benchmarks/vision_ttft.py`` measures it) unless ``--remove``.

Usage: python benchmarks/build_full_size_vision.py [--checkpoint DIR] [--out DIR] [--repeats N] [--remove]
           [--json-out FILE] [--plot FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_full_size import failure_reason, host_info, measure  # noqa: E402  (same measurement as the text build)

ARTIFACT = "onnx-int4-cpu"
CONFIG_DIR = HERE.parent / "tests/fixtures/phi-3.5-vision-instruct"
ENSURE = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
          "from make_random_checkpoint import make_random_checkpoint; "
          "make_random_checkpoint(Path(sys.argv[3]), Path(sys.argv[2]))")
# microsoft/Phi-3.5-vision-instruct-onnx, cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4 (GB = 1e9 bytes)
MICROSOFT_GB = {"text": 2.33, "vision": 0.445, "embedding": 0.394, "total": 3.22}
PARTS = {"text": "text.onnx", "vision": "vision.onnx", "embedding": "embedding.onnx"}


def part_sizes(artifact: Path) -> dict[str, int]:
    """Bytes of each part (graph + external data), the rest of the folder, and the total."""
    files = {p: p.stat().st_size for p in artifact.rglob("*") if p.is_file()}
    sizes = {part: sum(s for p, s in files.items() if p.name in (name, name + ".data")) for part, name in PARTS.items()}
    sizes["other"] = sum(files.values()) - sum(sizes.values())
    sizes["total"] = sum(files.values())
    return sizes


def one_run(ckpt: Path, out: Path, remove: bool) -> dict:
    import psutil

    load_before, mem_available = os.getloadavg(), psutil.virtual_memory().available
    cmd = [sys.executable, "-m", "edgeslm", "build", "--target", "cpu-x86_64", "--model", str(ckpt),
           "--out", str(out), "--no-eval", "--force", "--json"]
    build = measure(cmd)
    build.update(loadavg_before=[round(x, 2) for x in load_before], loadavg_after=[round(x, 2) for x in os.getloadavg()],
                 mem_available_before_bytes=mem_available, command=" ".join(cmd[1:]))
    if build["rc"] != 0:
        build["failed"] = failure_reason(build["rc"])
        build["stderr_tail"] = build.pop("stderr")[-4000:]
        build["stdout_tail"] = build.pop("stdout")[-2000:]
        return build
    build.pop("stdout")
    build["stderr_tail"] = build.pop("stderr")[-1500:]
    artifact = out / "artifacts" / ARTIFACT
    build["part_bytes"] = part_sizes(artifact)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["id"] == ARTIFACT)
    build["manifest_vision"] = {k: v for k, v in (entry.get("vision") or {}).items() if k != "tokens_by_grid"}
    build["quality"] = entry.get("quality")
    verify = subprocess.run([sys.executable, "-m", "edgeslm", "verify", str(out)],
                            check=False, capture_output=True, text=True)
    build["verify_passed"] = verify.returncode == 0
    if not build["verify_passed"]:
        build["verify_output"] = (verify.stdout + verify.stderr)[-2000:]
    if remove:
        shutil.rmtree(out, ignore_errors=True)
    return build


def plot(run: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    t, rss = zip(*run["rss_series"])
    ax.plot(t, [r / 2**30 for r in rss],
            label=f"streaming exporter, --no-eval, median-wall run "
                  f"(peak {run['peak_rss_sampled_bytes'] / 2**30:.2f} GiB, {run['wall_s']:.0f} s)")
    ax.axhline(4, color="grey", linestyle="--", linewidth=1, label="4 GiB goal")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("RSS of the build (GiB, process tree)")
    ax.set_title("edgeslm build --target cpu-x86_64, full-size Phi-3.5-vision (random bf16), ONNX phi3v")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/phi35v-random"),
                    help="cache dir of the random full-size Phi-3.5-vision checkpoint (made if missing)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgeslm-bench-phi35v.bundle")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--remove", action="store_true", help="delete the bundle after measuring it")
    ap.add_argument("--json-out", type=Path, default=HERE / "results" / "build_full_size_vision.json")
    ap.add_argument("--plot", type=Path, default=HERE.parent / "docs" / "images" / "build_full_size_vision_rss.png")
    args = ap.parse_args()

    subprocess.run([sys.executable, "-c", ENSURE, str(HERE), str(args.checkpoint), str(CONFIG_DIR)], check=True)
    index = json.loads((args.checkpoint / "model.safetensors.index.json").read_text())
    runs = []
    for i in range(args.repeats):
        print(f"repeat {i + 1}/{args.repeats}: edgeslm build --target cpu-x86_64 --no-eval ...", flush=True)
        runs.append(one_run(args.checkpoint, args.out, args.remove or i < args.repeats - 1))
        if "failed" in runs[-1]:
            print(f"  FAILED: {runs[-1]['failed']}\n{runs[-1]['stderr_tail']}", file=sys.stderr)
    ok = [r for r in runs if not r["rc"]]
    summary: dict = {}
    if ok:
        keys = ("wall_s", "cpu_s", "peak_rss_sampled_bytes", "ru_maxrss_bytes")
        summary = {k: statistics.median(r[k] for r in ok) for k in keys}
        summary["runs"] = len(ok)
        sizes = ok[-1]["part_bytes"]
        summary["part_bytes"] = sizes
        summary["vs_microsoft"] = {part: {"edgeslm_gb": round(sizes[part] / 1e9, 3), "microsoft_gb": gb,
                                          "ratio": round(sizes[part] / 1e9 / gb, 3)} for part, gb in MICROSOFT_GB.items()}
    report = {"benchmark": "edgeslm build --target cpu-x86_64 --no-eval on a full-size random Phi-3.5-vision (bf16)",
              "command": " ".join(sys.argv), "checkpoint": str(args.checkpoint),
              "checkpoint_bytes": index["metadata"]["total_size"], "host": host_info(), "repeats": args.repeats,
              "microsoft_reference_gb": MICROSOFT_GB,
              "why_no_eval": "the quality check runs the fp32 torch reference of the 4.2B model on 4x512 text tokens "
                             "and 118 image questions (CLIP on up to 5 crops + ~800-token prefill each): hours on "
                             "2 cores; random weights have no quality to measure",
              "summary": summary, "runs": runs}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=1) + "\n")
    if ok:
        plot(sorted(ok, key=lambda r: r["wall_s"])[len(ok) // 2], args.plot)  # the run of median wall time
        gib = 2**30
        print(f"\nwall {summary['wall_s']:.1f} s, CPU {summary['cpu_s']:.0f} s, peak RSS (tree) "
              f"{summary['peak_rss_sampled_bytes'] / gib:.2f} GiB, ru_maxrss {summary['ru_maxrss_bytes'] / gib:.2f} GiB")
        print(f"{'part':<11}{'edgeslm GB':>12}{'Microsoft GB':>14}{'ratio':>8}")
        for part, row in summary["vs_microsoft"].items():
            print(f"{part:<11}{row['edgeslm_gb']:>12.3f}{row['microsoft_gb']:>14.3f}{row['ratio']:>8.3f}")
    print(f"\nwrote {args.json_out}" + (f" and {args.plot}" if ok else ""))
    if len(ok) < len(runs) or not all(r.get("verify_passed") for r in ok):
        sys.exit("a build failed or its bundle did not verify")


if __name__ == "__main__":
    main()
