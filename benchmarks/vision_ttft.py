"""Time to first token of an image prompt on a Phi-3.5-vision ONNX bundle, split into its parts.

For each bundle (a fresh child process each), image and ``num_crops``, per repeat (after one warm-up):

* **preprocessing**: ``llm.prepare(messages)``'s ``preprocess_s`` (open the file + ``edgeslm.vision``
  preprocess: HD resize, normalize, bicubic global crop), plus the rest of ``prepare`` (chat template,
  tokenization, placeholder expansion) reported apart as ``template_s``;
* **vision encoder**: an ``onnxruntime.InferenceSession`` on the artifact's ``vision.onnx``
  (``intra_op_num_threads`` = physical cores, as the engine sets them) run on the same ``pixel_values``
  / ``image_sizes``;
* **engine TTFT**: ``GenerationResult.time_to_first_token_s`` of ``llm.stream(prepared=...)`` (what
  ``llm.chat`` runs; 1 new token, greedy). It starts after ``prepare``, so it holds the vision part, the
  embedding part, the decoder's prefill and the first token's sampling inside onnxruntime-genai;
* **prefill** = engine TTFT − vision encoder; cross-checked by a **text-only** prompt of the same token
  count through the same bundle: the image prompt's ids with every image placeholder (-1) replaced by a
  text token, no pixels (embedding + prefill only);
* **TTFT as the caller sees it** = ``prepare`` + engine TTFT.

Shared machine: each timed part (vision, image TTFT, text-only TTFT) waits until other processes use
< 5 % of the CPUs and is redone (twice at most) if they took more while it ran (``runtime_decode.py``'s
rule); every row records the CPU seconds other processes took (``other_cpu_s``) and the attempts.

``num_crops``: the manifest's value (4, from the recipe) goes through ``llm.prepare``; the other one (1)
through the same ``runtime.prompt_inputs.prepare_prompt`` with the manifest's ``VisionInfo`` copied with
``num_crops`` changed (there is no load-time override; ``num_crops`` only changes preprocessing, the
image token count and the crops the vision encoder runs: the artifact's graphs take any crop count).
``--demo-crops1-bundle`` measures a bundle built with ``--set onnx-int4-cpu.num_crops=1`` as a check.

Vision memory (``--vision-memory``, a fresh process per bundle): RSS before the session, after loading
it, and the peak while it runs on one image at the manifest's ``num_crops`` (sampled every 2 ms), beside
the manifest's estimate (``vision_runtime_bytes``).

Usage: python benchmarks/vision_ttft.py [--demo-bundle DIR] [--full-bundle DIR] [--repeats N]
           [--full-repeats N] [--skip-full] [--json-out FILE]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from runtime_decode import cpu_mark, disturbed, wait_quiet  # noqa: E402  (the shared-machine rule of the decode runs)

DEMO_MODEL = ROOT / "examples/models/phi35v-shapes-tiny"
IMAGES = {"shapes-336.png": ROOT / "tests/fixtures/images/shapes-336.png",
          "tall-64x900.png": ROOT / "tests/fixtures/images/tall-64x900.png"}
QUESTION = "How many shapes are there?"
ARTIFACT = "onnx-int4-cpu"


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _messages(path: Path) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(path)}},
                                         {"type": "text", "text": QUESTION}]}]


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def measured(fn, quiet_s: float, retries: int):
    """``fn()`` timed after waiting for a quiet machine; redone (up to ``retries`` times) when other
    processes took more than 5 % of the CPUs meanwhile (``runtime_decode.py``'s rule). Returns
    (value, wall_s, facts)."""
    for attempt in range(1, retries + 2):  # noqa: B007 (the count is reported)
        waited = wait_quiet(quiet_s)
        busy0, own0 = cpu_mark()
        t0 = time.perf_counter()
        value = fn()
        wall = time.perf_counter() - t0
        busy1, own1 = cpu_mark()
        other = max(0.0, (busy1 - busy0) - (own1 - own0))
        if not disturbed({"other_processes_cpu_s": other, "total_s": wall}):
            break
    return value, wall, {"other_cpu_s": round(other, 2), "attempts": attempt, "waited_s": round(waited, 1)}


def worker(bundle: Path, repeats: int, crops: list[int], quiet_s: float, retries: int) -> dict:
    """Measure one bundle in this process (see the module docstring)."""
    import numpy as np
    import onnxruntime as ort

    import edgeslm
    from edgeslm.runtime.host_probe import probe_host
    from edgeslm.runtime.prompt_inputs import PreparedPrompt, check_length, prepare_prompt
    from edgeslm.vision.image_files import open_image
    from edgeslm.vision.phi3v_processor import preprocess

    llm = edgeslm.load(bundle)
    info = llm.candidate.artifact.vision
    threads = probe_host().physical_cores  # what the engine gives the decoder (and its vision part)
    artifact_dir = bundle / llm.candidate.artifact.path
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(artifact_dir / "vision.onnx"), opts, providers=["CPUExecutionProvider"])
    filler = llm.engine.encode("image")[-1]  # a text token for the text-only prompt of the same length

    def prepare(messages: list[dict], num_crops: int):
        if num_crops == info.num_crops:
            return llm.prepare(messages)
        prepared = prepare_prompt(messages, None, llm.template, llm.engine.encode,
                                  dataclasses.replace(info, num_crops=num_crops), model_name=llm.manifest.model.name)
        check_length(prepared, llm.max_prompt_tokens, llm.context_tokens, llm.candidate.artifact.id)
        return prepared

    def first_token(prepared) -> float:
        stream = llm.stream([], prepared=prepared, max_new_tokens=1)
        for _ in stream:
            pass
        return stream.result.time_to_first_token_s

    cases = []
    for name, path in IMAGES.items():
        for num_crops in crops:
            messages = _messages(path)
            rows = []
            for i in range(repeats + 1):  # the first is a warm-up
                row = {"loadavg": _loadavg()}
                t0 = time.perf_counter()
                prepared = prepare(messages, num_crops)
                row["prepare_s"] = time.perf_counter() - t0
                row["preprocess_s"] = prepared.preprocess_s
                row["template_s"] = row["prepare_s"] - prepared.preprocess_s
                t0 = time.perf_counter()
                image = open_image(path, label=name)
                row["open_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                preprocess([image], num_crops=num_crops)
                row["preprocess_only_s"] = time.perf_counter() - t0
                images = prepared.images
                feeds = {"pixel_values": images.pixel_values, "image_sizes": images.image_sizes}
                outputs, row["vision_s"], row["vision_cpu"] = measured(lambda feeds=feeds: session.run(None, feeds),
                                                                       quiet_s, retries)
                features = outputs[0]
                row["engine_ttft_s"], _, row["engine_cpu"] = measured(lambda prepared=prepared: first_token(prepared), quiet_s,
                                                                      retries)
                text_only = PreparedPrompt([filler if t < 0 else t for t in prepared.ids])
                row["text_only_ttft_s"], _, row["text_only_cpu"] = measured(lambda text_only=text_only: first_token(text_only),
                                                                            quiet_s, retries)
                row["prefill_s"] = row["engine_ttft_s"] - row["vision_s"]
                row["ttft_total_s"] = row["prepare_s"] + row["engine_ttft_s"]
                if i:
                    rows.append(row)
            keys = ("prepare_s", "preprocess_s", "template_s", "open_s", "preprocess_only_s", "vision_s",
                    "engine_ttft_s", "prefill_s", "text_only_ttft_s", "ttft_total_s")
            case = {"image": name, "num_crops": num_crops, "prompt_tokens": len(prepared.ids),
                    "image_tokens": prepared.image_tokens, "crops_run": int(1 + np.prod(images.image_sizes[0] // 336)),
                    "pixel_values_shape": list(images.pixel_values.shape), "image_sizes": images.image_sizes.tolist(),
                    "image_features_shape": list(features.shape), "repeats": len(rows),
                    "median": {k: round(_median(rows, k), 4) for k in keys},
                    "loadavg_range": [min(r["loadavg"][0] for r in rows), max(r["loadavg"][0] for r in rows)],
                    "redone_runs": sum(r[k]["attempts"] - 1 for r in rows for k in ("vision_cpu", "engine_cpu", "text_only_cpu")),
                    "runs": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}
            m = case["median"]
            case["median"]["prefill_vs_text_only"] = round(m["prefill_s"] / m["text_only_ttft_s"], 3)
            print(f"  {name} num_crops={num_crops}: {case['prompt_tokens']} tokens ({case['image_tokens']} image), "
                  f"prepare {m['prepare_s']:.3f} s (preprocess {m['preprocess_s']:.3f}), vision {m['vision_s']:.3f} s, "
                  f"prefill {m['prefill_s']:.3f} s (text-only {m['text_only_ttft_s']:.3f}), "
                  f"TTFT {m['ttft_total_s']:.3f} s", file=sys.stderr, flush=True)
            cases.append(case)
    result = {"bundle": str(bundle), "manifest_num_crops": info.num_crops, "threads": threads,
              "vision_precision": info.precision, "vision_weight_bytes": info.vision_weight_bytes,
              "artifact_bytes": sum(p.stat().st_size for p in artifact_dir.rglob("*") if p.is_file()), "cases": cases}
    llm.close()
    return result


def vision_memory(bundle: Path, image: Path) -> dict:
    """RSS of this process around loading and running the vision session once (fresh process)."""
    import onnxruntime as ort
    import psutil

    from edgeslm.bundle.manifest import read_manifest
    from edgeslm.runtime.host_probe import probe_host
    from edgeslm.vision.image_files import open_image
    from edgeslm.vision.phi3v_processor import preprocess

    manifest = read_manifest(bundle)
    artifact = next(a for a in manifest.artifacts if a.id == ARTIFACT)
    images = preprocess([open_image(image, label=image.name)], num_crops=artifact.vision.num_crops)
    proc = psutil.Process()
    before = proc.memory_info().rss
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = probe_host().physical_cores, 1
    session = ort.InferenceSession(str(bundle / artifact.path / "vision.onnx"), opts, providers=["CPUExecutionProvider"])
    loaded = proc.memory_info().rss
    peaks, done = [], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks.append(proc.memory_info().rss)
            done.wait(0.002)

    runs = []
    for _ in range(2):  # the first run also allocates the arena; the second shows what stays
        peaks.clear()
        done.clear()
        sampler = threading.Thread(target=sample, daemon=True)
        start_rss = proc.memory_info().rss
        sampler.start()
        t0 = time.perf_counter()
        session.run(None, {"pixel_values": images.pixel_values, "image_sizes": images.image_sizes})
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        runs.append({"rss_start_bytes": start_rss, "peak_rss_bytes": max(peaks), "rss_after_bytes": proc.memory_info().rss,
                     "wall_s": round(wall, 3), "samples": len(peaks)})
    return {"bundle": str(bundle), "image": image.name, "num_crops": artifact.vision.num_crops,
            "pixel_values_shape": list(images.pixel_values.shape), "rss_before_session_bytes": before,
            "rss_after_load_bytes": loaded, "load_increase_bytes": loaded - before,
            "run_increase_bytes": runs[0]["peak_rss_bytes"] - loaded,
            "peak_increase_over_before_session_bytes": runs[0]["peak_rss_bytes"] - before,
            "manifest_vision_runtime_bytes": artifact.vision.vision_runtime_bytes,
            "manifest_vision_weight_bytes": artifact.vision.vision_weight_bytes,
            "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "runs": runs, "loadavg": _loadavg()}


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout)


def ensure_demo_bundle(out: Path, num_crops: int | None = None) -> Path:
    if (out / "manifest.json").is_file():
        return out
    cmd = [sys.executable, "-m", "edgeslm", "build", "--target", "cpu-x86_64", "--model", str(DEMO_MODEL),
           "--out", str(out), "--no-eval", "--force"]
    if num_crops is not None:
        cmd += ["--set", f"{ARTIFACT}.num_crops={num_crops}"]
    print("building", out, file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    return out


def host() -> dict:
    from importlib.metadata import version

    import psutil

    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    return {"cpu_count": os.cpu_count(), "cpu_model": model, "ram_total_bytes": psutil.virtual_memory().total,
            "python": platform.python_version(),
            "packages": {p: version(p) for p in ("edgeslm", "onnxruntime", "onnxruntime-genai", "numpy", "pillow")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo-bundle", type=Path, default=Path("/tmp/edgeslm-bench-phi35v-tiny.bundle"),
                    help="demo-scale bundle (built from examples/models/phi35v-shapes-tiny with --no-eval if missing)")
    ap.add_argument("--demo-crops1-bundle", type=Path, default=Path("/tmp/edgeslm-bench-phi35v-tiny-c1.bundle"),
                    help="the same built with --set onnx-int4-cpu.num_crops=1 (built if missing)")
    ap.add_argument("--full-bundle", type=Path, default=Path("/tmp/edgeslm-bench-phi35v.bundle"),
                    help="full-size bundle of benchmarks/build_full_size_vision.py")
    ap.add_argument("--repeats", type=int, default=5, help="demo-scale repeats (medians)")
    ap.add_argument("--full-repeats", type=int, default=3)
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--quiet-s", type=float, default=30.0, help="longest wait for a quiet machine before a timed part")
    ap.add_argument("--retries", type=int, default=2, help="redo a timed part that other processes disturbed")
    ap.add_argument("--json-out", type=Path, default=ROOT / "benchmarks/results/vision_ttft.json")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--crops", default="4,1", help=argparse.SUPPRESS)
    ap.add_argument("--memory", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats, [int(c) for c in args.crops.split(",")],
                                args.quiet_s, args.retries)))
        return
    if args.memory:
        print(json.dumps(vision_memory(args.memory, IMAGES["shapes-336.png"])))
        return

    report = {"benchmark": "image-prompt TTFT split: preprocessing, vision encoder, prefill (Phi-3.5-vision ONNX)",
              "command": " ".join(sys.argv), "host": host(), "question": QUESTION, "loadavg_start": _loadavg(),
              "results": {}, "vision_memory": {}}
    demo = ensure_demo_bundle(args.demo_bundle)
    demo1 = ensure_demo_bundle(args.demo_crops1_bundle, num_crops=1)
    plan = [("demo", demo, args.repeats, "4,1"), ("demo_built_num_crops_1", demo1, args.repeats, "1")]
    if not args.skip_full:
        if (args.full_bundle / "manifest.json").is_file():
            plan.append(("full", args.full_bundle, args.full_repeats, "4,1"))
        else:
            print(f"no full-size bundle at {args.full_bundle}: run benchmarks/build_full_size_vision.py first",
                  file=sys.stderr)
    for key, bundle, repeats, crops in plan:
        print(f"{key}: {bundle} ({repeats} repeats)", file=sys.stderr, flush=True)
        report["results"][key] = _child(["--worker", str(bundle), "--repeats", str(repeats), "--crops", crops,
                                         "--quiet-s", str(args.quiet_s), "--retries", str(args.retries)])
        report["results"][key]["loadavg_after"] = _loadavg()
    for key, bundle, _, _ in plan:
        if key != "demo_built_num_crops_1":
            report["vision_memory"][key] = _child(["--memory", str(bundle)])
            m = report["vision_memory"][key]
            print(f"{key} vision memory: load +{m['load_increase_bytes'] / 2**20:.0f} MiB, run +"
                  f"{m['run_increase_bytes'] / 2**20:.0f} MiB (manifest estimate "
                  f"{m['manifest_vision_runtime_bytes'] / 2**20:.0f} MiB)", file=sys.stderr)
    report["loadavg_end"] = _loadavg()
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json_out}", file=sys.stderr)


if __name__ == "__main__":
    main()
