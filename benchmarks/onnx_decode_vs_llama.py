"""Decode speed of the streamed ONNX variants, the builder's artifact and llama.cpp Q4_0, in one run.

On the full-size checkpoint (random weights, real shapes), for each variant:

* streamed ONNX: ``edgeslm build --target raspberrypi --no-eval`` with ``--set onnx-int4-cpu.block_size=B``
  and ``symmetric=S`` (accuracy level 4), for B in 32/64/128 and S in true/false;
* builder: the same settings as the recipe default through ``exporter=ort-builder`` (``--builder``);
* llama.cpp: ``llama_cpp_reference.py`` (llama.cpp's own converter, Q4_0, llama-cpp-python built from
  source, see setup_bench_env.sh), same thread count (physical cores), same prompt length.

Each ONNX variant is measured in a fresh child process through ``edgeslm.load`` (the shim the CLI
uses): TTFT and decode tok/s of ``--decode-tokens`` greedy tokens after a chat prompt, median of
``--repeats``. The memory-bandwidth ceiling of a variant is read bandwidth / bytes read per token,
with bytes per token = the decoder's weights (every MatMulNBits blob, scale and zero point, once per
token) + one embedding row; the read bandwidth is measured here (``--bandwidth-gib`` GiB read by as
many threads as physical cores, median of 5). ``--demo-perplexity`` adds the perplexity of each
variant's settings on the demo model (held-out docs, 8x512 tokens), and of llama.cpp Q4_0 on it.

Usage: benchmarks/.venv/bin/python benchmarks/onnx_decode_vs_llama.py [--checkpoint DIR] [--work DIR]
           [--variants 32s,32a,64s,64a,128s,128a] [--builder] [--llama] [--demo-perplexity]
           [--repeats 3] [--decode-tokens 64] [--json-out FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEMO = REPO / "examples" / "models" / "phi3-docs-21m"
HELDOUT = REPO / "examples" / "eval" / "docs-heldout.txt"
ART = "onnx-int4-cpu"
PROMPT = ("Explain in detail how Python's os.path.join works, with several examples, the edge cases on Windows "
          "and POSIX, and how it differs from pathlib.Path.joinpath.")

MEASURE = """import json, sys, time, resource
import edgeslm
llm = edgeslm.load(sys.argv[1], artifact=sys.argv[2])
messages = [{"role": "user", "content": sys.argv[3]}]
runs = []
for _ in range(int(sys.argv[5]) + 1):
    stream = llm.stream(messages, max_new_tokens=int(sys.argv[4]))
    for _ in stream:
        pass
    r = stream.result
    runs.append({"ttft_s": r.time_to_first_token_s, "tok_s": r.decode_tokens_per_s, "tokens": r.usage.completion_tokens})
print(json.dumps({"prompt_tokens": len(llm.prompt_ids(messages)), "runs": runs[1:], "warmup": runs[0],
                  "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def physical_cores() -> int:
    sys.path.insert(0, str(REPO))
    from edgeslm.runtime.host_probe import probe_host

    return probe_host().physical_cores


def read_bandwidth(gib: float, threads: int) -> float:
    """Bytes/s read by ``threads`` threads summing disjoint parts of a ``gib`` GiB array (median of 5)."""
    import numpy as np

    data = np.ones(int(gib * 2**30) // 8, dtype=np.uint64)
    parts = np.array_split(data, threads)
    times = []
    for _ in range(6):
        workers = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        times.append(time.perf_counter() - start)
    return data.nbytes / statistics.median(times[1:])


def build(ckpt: Path, out: Path, settings: dict[str, str]) -> Path:
    if (out / "manifest.json").is_file():
        return out
    cmd = [sys.executable, "-m", "edgeslm", "build", "--target", "raspberrypi", "--model", str(ckpt), "--out", str(out),
           "--force", "--no-eval"]
    for key, value in settings.items():
        cmd += ["--set", f"{ART}.{key}={value}"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def weight_bytes_per_token(artifact: Path) -> int:
    """Every initializer the decoder reads per token: all but the embedding table, plus one row of it."""
    import onnx

    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    total, row = 0, 0
    for tensor in model.graph.initializer:
        length = next((int(e.value) for e in tensor.external_data if e.key == "length"), len(tensor.raw_data))
        if tensor.name.startswith("model.embed_tokens"):
            row += length // tensor.dims[0]
        else:
            total += length
    return total + row


def measure_shim(bundle: Path, tokens: int, repeats: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(bundle), ART, PROMPT, str(tokens), str(repeats)],
                          check=True, capture_output=True, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["ttft_s"] = statistics.median(r["ttft_s"] for r in result["runs"])
    result["decode_tok_s"] = statistics.median(r["tok_s"] for r in result["runs"])
    return result


def measure_llama(ckpt: Path, work: Path, prompt_tokens: int, tokens: int, repeats: int, threads: int) -> dict:
    cmd = [sys.executable, str(HERE / "llama_cpp_reference.py"), "--checkpoint", str(ckpt), "--work", str(work),
           "--prompt-tokens", str(prompt_tokens), "--decode-tokens", str(tokens), "--repeats", str(repeats),
           "--threads", str(threads)]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout)


def demo_perplexity(work: Path, settings: dict[str, str]) -> float:
    sys.path.insert(0, str(REPO))
    from edgeslm.backends.log_likelihood import nll_per_window
    from edgeslm.backends.onnx_genai import scoring
    from edgeslm.builder.text_windows import BuildText

    out = build(DEMO, work / ("demo-" + "-".join(f"{k}{v}" for k, v in settings.items())), settings)
    windows = BuildText(HELDOUT, "--eval-text").windows(DEMO / "tokenizer.json", 8, 512)
    nll = nll_per_window(scoring.window_logits(out / "artifacts" / ART, windows), windows)
    return math.exp(sum(nll) / sum(len(w) - 1 for w in windows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/phi35-random"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeslm-decode-bench"))
    ap.add_argument("--variants", default="32s,32a,64s,64a,128s,128a")
    ap.add_argument("--builder", action="store_true")
    ap.add_argument("--llama", action="store_true")
    ap.add_argument("--demo-perplexity", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--bandwidth-gib", type=float, default=2.0)
    ap.add_argument("--json-out", type=Path, default=HERE / "results" / "onnx_decode_vs_llama.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    threads = physical_cores()
    variants = {}
    for spec in args.variants.split(","):
        block, sym = int(spec[:-1]), spec[-1] == "s"
        variants[f"streamed b{block} {'sym' if sym else 'asym'}"] = {"block_size": str(block),
                                                                      "symmetric": "true" if sym else "false"}
    if args.builder:
        variants["builder b32 sym"] = {"block_size": "32", "symmetric": "true", "exporter": "ort-builder"}
    bandwidth = read_bandwidth(args.bandwidth_gib, threads)
    rows: dict[str, dict] = {}
    for name, settings in variants.items():
        print(f"{name}: build and measure ...", file=sys.stderr, flush=True)
        bundle = build(args.checkpoint, args.work / name.replace(" ", "-"), settings)
        measured = bundle.with_name(bundle.name + ".measured.json")  # a rerun keeps what was measured
        if measured.is_file():
            rows[name] = json.loads(measured.read_text())
            continue
        artifact = bundle / "artifacts" / ART
        row = measure_shim(bundle, args.decode_tokens, args.repeats)
        row["bytes_per_token"] = weight_bytes_per_token(artifact)
        row["ceiling_tok_s"] = bandwidth / row["bytes_per_token"]
        row["of_ceiling"] = row["decode_tok_s"] / row["ceiling_tok_s"]
        row["artifact_bytes"] = sum(p.stat().st_size for p in artifact.iterdir())
        if args.demo_perplexity:
            row["demo_perplexity"] = demo_perplexity(args.work, settings)
        rows[name] = row
        measured.write_text(json.dumps(row))
    prompt_tokens = next(iter(rows.values()))["prompt_tokens"] if rows else 64
    if args.llama:
        print("llama.cpp Q4_0: convert and measure ...", file=sys.stderr, flush=True)
        llama = measure_llama(args.checkpoint, args.work / "llama", prompt_tokens, args.decode_tokens, args.repeats,
                              threads)
        llama["bytes_per_token"] = llama.get("gguf_bytes", 0)
        llama["ceiling_tok_s"] = bandwidth / llama["bytes_per_token"] if llama["bytes_per_token"] else None
        if args.demo_perplexity:
            demo = subprocess.run([sys.executable, str(HERE / "llama_cpp_reference.py"), "--checkpoint", str(DEMO),
                                   "--work", str(args.work / "llama-demo"), "--repeats", "0", "--perplexity-text",
                                   str(HELDOUT), "--perplexity-windows", "8", "--window-tokens", "512"],
                                  check=True, capture_output=True, text=True)
            llama["demo_perplexity"] = json.loads(demo.stdout)["perplexity"]["perplexity"]
        rows["llama.cpp Q4_0"] = llama
        for row in rows.values():
            row["vs_llama_cpp"] = row["decode_tok_s"] / llama["decode_tok_s"]
    report = {"benchmark": "decode tok/s and TTFT, full-size Phi-3.5-mini shapes (random weights)",
              "command": " ".join(sys.argv), "threads": threads, "read_bandwidth_bytes_s": bandwidth,
              "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t"),
              "decode_tokens": args.decode_tokens, "repeats": args.repeats, "rows": rows}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s with {threads} threads")
    print(f"{'variant':<22}{'decode tok/s':>13}{'TTFT s':>8}{'ceiling':>9}{'of ceil':>9}{'vs llama':>9}{'size GB':>9}"
          f"{'demo ppl':>10}")
    for name, row in rows.items():
        ceiling = row.get("ceiling_tok_s") or 0
        print(f"{name:<22}{row['decode_tok_s']:>13.2f}{row['ttft_s']:>8.2f}{ceiling:>9.2f}"
              f"{row['decode_tok_s'] / ceiling if ceiling else 0:>9.2f}{row.get('vs_llama_cpp', 0):>9.2f}"
              f"{row.get('artifact_bytes', row.get('gguf_bytes', 0)) / 1e9:>9.2f}{row.get('demo_perplexity', 0):>10.2f}")
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
