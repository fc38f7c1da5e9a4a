"""GGUF in one run: edgeslm's writer vs llama.cpp's converter, edgeslm.load vs raw llama-cpp-python, vs ONNX.

On the full-size checkpoint (random weights, real Phi-3.5-mini shapes):

* build: ``edgeslm build --no-eval`` of the gguf format (edgeslm's streaming writer, Q4_0) against
  llama.cpp's route (``convert_hf_to_gguf.py --outtype f16``, then ``llama_model_quantize`` Q4_0), each
  step a child process whose wall time and peak RSS (``os.wait4``'s ``ru_maxrss``) are recorded; and the
  default ONNX artifact (``--target raspberrypi``) for the decode comparison.
* decode: at each ``--contexts`` allocation, a fresh child process per engine: ``edgeslm.load(...,
  context=N)`` on our GGUF and on the ONNX artifact (the runtime's own TTFT and decode tok/s; the KV
  cache is reset before each run so that every run pays the whole prompt), and raw llama-cpp-python on
  the same GGUF file (``Llama(n_ctx=N, n_threads=physical cores, n_batch=512)``, eval + argmax, the same
  prompt ids and definitions). One warm-up, then ``--repeats`` runs, medians; peak RSS of each child.
* ``--interleaved-context N``: edgeslm's engine path (``LLM.stream``) and a raw eval + argmax loop on the very
  same ``llama_cpp.Llama`` object, alternating in one process (so that other load on the host hits both alike).
* quality: perplexity on the demo model (held-out docs, 8x512 tokens) of our GGUF, llama.cpp's Q4_0 of the
  same checkpoint, the ONNX artifact and the source (fp32 transformers).

Usage: .venv/bin/python benchmarks/gguf_vs_llama.py [--checkpoint /tmp/phi35-random] [--work DIR]
           [--contexts 512,2048,4096] [--repeats 2] [--decode-tokens 48] [--json-out FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEMO = REPO / "examples" / "models" / "phi3-docs-21m"
HELDOUT = REPO / "examples" / "eval" / "docs-heldout.txt"
CONVERTER = HERE / ".venv" / "llama.cpp" / "convert_hf_to_gguf.py"
PROMPT = ("Explain in detail how Python's os.path.join works, with several examples, the edge cases on Windows "
          "and POSIX, and how it differs from pathlib.Path.joinpath.")
TARGET = ('name = "gguf-bench"\ndescription = "benchmark target: gguf only"\nos = ["linux"]\ncpu_arch = "x86_64"\n'
          'ram_gb = [8]\nformats = ["gguf"]\n\n[planning]\nmemory_bandwidth_gbps = 10.0\ndefault_context_length = 4096\n')

EDGESLM_RUN = """import json, resource, sys
import edgeslm
bundle, artifact, context, prompt, tokens, repeats = sys.argv[1:7]
llm = edgeslm.load(bundle, artifact=artifact, context=int(context))
messages = [{"role": "user", "content": prompt}]
runs = []
for _ in range(int(repeats) + 1):
    reset = getattr(getattr(llm.engine, "llm", None), "reset", None)
    if reset:
        reset()  # llama.cpp would reuse the cached prompt: every run pays the whole prefill
    stream = llm.stream(messages, max_new_tokens=int(tokens))
    for _ in stream:
        pass
    r = stream.result
    runs.append({"ttft_s": r.time_to_first_token_s, "tok_s": r.decode_tokens_per_s, "tokens": r.usage.completion_tokens})
print(json.dumps({"prompt_ids": llm.prompt_ids(messages), "runs": runs[1:], "context": llm.context_tokens,
                  "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

GREEDY = """import json, resource, sys, time
import numpy as np
import llama_cpp
def raw_run(llm, ids, tokens):
    \"\"\"One greedy generation from an empty KV cache: eval + argmax of the last logits, EOS ignored.\"\"\"
    n_vocab = llm.n_vocab()
    def argmax():
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).argmax())
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    token = argmax()
    first = time.perf_counter()
    for _ in range(tokens - 1):
        llm.eval([token])
        token = argmax()
    return {"ttft_s": first - start, "tok_s": (tokens - 1) / (time.perf_counter() - first), "tokens": tokens}
"""

RAW_RUN = GREEDY + """
path, context, ids, tokens, repeats, threads = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), \\
    int(sys.argv[5]), int(sys.argv[6])
llm = llama_cpp.Llama(path, n_ctx=context, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
runs = [raw_run(llm, ids, tokens) for _ in range(repeats + 1)]
print(json.dumps({"runs": runs[1:], "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

INTERLEAVED = GREEDY + """
import edgeslm
bundle, context, prompt, tokens, repeats = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
llm = edgeslm.load(bundle, artifact="gguf", context=context)
raw = llm.engine.llm  # the same llama_cpp.Llama object: only the code around it differs
messages = [{"role": "user", "content": prompt}]
ids = llm.prompt_ids(messages)
def edgeslm_run():
    raw.reset()
    stream = llm.stream(messages, max_new_tokens=tokens)
    for _ in stream:
        pass
    return {"ttft_s": stream.result.time_to_first_token_s, "tok_s": stream.result.decode_tokens_per_s,
            "tokens": stream.result.usage.completion_tokens}
edgeslm_run(); raw_run(raw, ids, tokens)  # warm-up
runs = {"edgeslm": [], "raw": []}
for _ in range(repeats):
    runs["edgeslm"].append(edgeslm_run())
    runs["raw"].append(raw_run(raw, ids, tokens))
print(json.dumps({"prompt_tokens": len(ids), "runs": runs}))
"""


def log(msg: str) -> None:
    print(f"[gguf_vs_llama {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run a child; its wall time and stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
                            text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}): {err[-2000:]}")
    return {"wall_s": round(wall, 1), "stdout": out}


def measured(cmd: list[str], env: dict | None = None) -> dict:
    """``timed`` in a fresh wrapper process, so that ru_maxrss is this command's own peak."""
    wrapper = ("import json, os, resource, subprocess, sys, time; t = time.perf_counter(); "
               "p = subprocess.run(json.loads(sys.argv[1]), capture_output=True, text=True); "
               "print(json.dumps({'rc': p.returncode, 'wall_s': time.perf_counter() - t, 'stdout': p.stdout, "
               "'stderr': p.stderr[-3000:], 'peak_rss_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))")
    result = json.loads(timed([sys.executable, "-c", wrapper, json.dumps(cmd)], env)["stdout"])
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} failed ({result['rc']}): {result['stderr']}")
    result["wall_s"] = round(result["wall_s"], 1)
    return result


def build_ours(ckpt: Path, out: Path, data: Path) -> dict:
    if (out / "manifest.json").is_file() and out.with_suffix(".build.json").is_file():
        return json.loads(out.with_suffix(".build.json").read_text())
    row = measured([sys.executable, "-m", "edgeslm", "build", "--target", "gguf-bench", "--model", str(ckpt), "--out",
                    str(out), "--force", "--no-eval"], {"EDGESLM_DATA_DIR": str(data)})
    row = {"wall_s": row["wall_s"], "peak_rss_bytes": row["peak_rss_bytes"],
           "gguf_bytes": (out / "artifacts" / "gguf" / "model.gguf").stat().st_size}
    out.with_suffix(".build.json").write_text(json.dumps(row))
    return row


def build_llama(ckpt: Path, work: Path, name: str) -> dict:
    f16, q4 = work / f"{name}-f16.gguf", work / f"{name}-Q4_0.gguf"
    record = work / f"{name}-Q4_0.build.json"
    if q4.is_file() and record.is_file():
        return json.loads(record.read_text())
    convert = measured([sys.executable, str(CONVERTER), str(ckpt), "--outfile", str(f16), "--outtype", "f16"])
    quantize = measured([sys.executable, "-c", "import ctypes, sys, llama_cpp; llama_cpp.llama_backend_init(); "
                         "p = llama_cpp.llama_model_quantize_default_params(); p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0; "
                         "p.nthread = int(sys.argv[3]); "
                         "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))",
                         str(f16), str(q4), str(physical_cores())])
    f16.unlink()
    row = {"convert_wall_s": convert["wall_s"], "convert_peak_rss_bytes": convert["peak_rss_bytes"],
           "quantize_wall_s": quantize["wall_s"], "quantize_peak_rss_bytes": quantize["peak_rss_bytes"],
           "wall_s": round(convert["wall_s"] + quantize["wall_s"], 1),
           "peak_rss_bytes": max(convert["peak_rss_bytes"], quantize["peak_rss_bytes"]), "gguf_bytes": q4.stat().st_size}
    record.write_text(json.dumps(row))
    return row


def build_onnx(ckpt: Path, out: Path) -> None:
    if not (out / "manifest.json").is_file():
        measured([sys.executable, "-m", "edgeslm", "build", "--target", "raspberrypi", "--model", str(ckpt), "--out",
                  str(out), "--force", "--no-eval"])


def physical_cores() -> int:
    sys.path.insert(0, str(REPO))
    from edgeslm.runtime.host_probe import probe_host

    return probe_host().physical_cores


def summarize(result: dict) -> dict:
    runs = result["runs"]
    return {"ttft_s": round(statistics.median(r["ttft_s"] for r in runs), 3),
            "decode_tok_s": round(statistics.median(r["tok_s"] for r in runs), 3),
            "peak_rss_bytes": result["ru_maxrss_bytes"], "runs": runs}


def decode_rows(gguf_bundle: Path, onnx_bundle: Path, contexts: list[int], tokens: int, repeats: int, env: dict) -> dict:
    rows: dict[str, dict] = {}
    threads = physical_cores()
    gguf_file = gguf_bundle / "artifacts" / "gguf" / "model.gguf"
    for context in contexts:
        log(f"context {context}: edgeslm.load gguf")
        ours = json.loads(timed([sys.executable, "-c", EDGESLM_RUN, str(gguf_bundle), "gguf", str(context), PROMPT,
                                 str(tokens), str(repeats)], env)["stdout"])
        log(f"context {context}: raw llama-cpp-python")
        raw = json.loads(timed([sys.executable, "-c", RAW_RUN, str(gguf_file), str(context), json.dumps(ours["prompt_ids"]),
                                str(tokens), str(repeats), str(threads)])["stdout"])
        log(f"context {context}: edgeslm.load onnx-int4-cpu")
        onnx = json.loads(timed([sys.executable, "-c", EDGESLM_RUN, str(onnx_bundle), "onnx-int4-cpu", str(context),
                                 PROMPT, str(tokens), str(repeats)])["stdout"])
        row = {"prompt_tokens": len(ours["prompt_ids"]), "load_average_1min": round(os.getloadavg()[0], 2),
               "edgeslm gguf": summarize(ours),
               "raw llama-cpp-python": summarize(raw), "edgeslm onnx-int4-cpu": summarize(onnx)}
        row["gguf_vs_raw_decode"] = round(row["edgeslm gguf"]["decode_tok_s"] / row["raw llama-cpp-python"]["decode_tok_s"], 3)
        row["onnx_vs_gguf_decode"] = round(row["edgeslm onnx-int4-cpu"]["decode_tok_s"] / row["edgeslm gguf"]["decode_tok_s"], 3)
        rows[str(context)] = row
        log(f"context {context}: {json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)})}")
    return rows


def demo_perplexity(work: Path, data: Path) -> dict:
    sys.path.insert(0, str(REPO))
    import torch
    from transformers import AutoModelForCausalLM

    from edgeslm.backends.gguf import scoring as gguf_scoring
    from edgeslm.backends.log_likelihood import nll_per_window
    from edgeslm.backends.onnx_genai import scoring as onnx_scoring
    from edgeslm.builder.text_windows import BuildText

    windows = BuildText(HELDOUT, "--eval-text").windows(DEMO / "tokenizer.json", 8, 512)
    count = sum(len(w) - 1 for w in windows)
    ours = work / "demo-gguf.bundle"
    build_ours(DEMO, ours, data)
    onnx = work / "demo-onnx.bundle"
    build_onnx(DEMO, onnx)
    build_llama(DEMO, work, "demo")
    reference = work / "demo-llama-artifact"
    reference.mkdir(exist_ok=True)
    if not (reference / "model.gguf").exists():
        shutil.copy(work / "demo-Q4_0.gguf", reference / "model.gguf")
    result = {}
    for name, scorer, folder in (("edgeslm gguf Q4_0", gguf_scoring, ours / "artifacts" / "gguf"),
                                 ("llama.cpp Q4_0 (converter + quantize)", gguf_scoring, reference),
                                 ("edgeslm onnx-int4-cpu", onnx_scoring, onnx / "artifacts" / "onnx-int4-cpu")):
        nll = nll_per_window(scorer.window_logits(folder, windows), windows)
        result[name] = round(math.exp(sum(nll) / count), 4)
    model = AutoModelForCausalLM.from_pretrained(str(DEMO), dtype=torch.float32).eval()
    with torch.inference_mode():
        nll = sum(float(torch.nn.functional.cross_entropy(model(input_ids=torch.tensor([w])).logits[0, :-1],
                                                          torch.tensor(w[1:]), reduction="sum")) for w in windows)
    result["source (fp32 transformers)"] = round(math.exp(nll / count), 4)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/phi35-random"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeslm-gguf-bench"))
    ap.add_argument("--contexts", default="512,2048,4096")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=48)
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--interleaved-context", type=int, default=0,
                    help="also: edgeslm's engine and a raw eval loop on the same Llama object, alternating in one process")
    ap.add_argument("--decode-only", action="store_true",
                    help="reuse the bundles of an earlier run in --work: no perplexity, no builds, only decode rows")
    ap.add_argument("--json-out", type=Path, default=HERE / "results" / "gguf_vs_llama.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "data"
    if not data.is_dir():
        shutil.copytree(REPO / "targets", data / "targets")
        shutil.copytree(REPO / "recipes", data / "recipes")
        (data / "targets" / "gguf-bench.toml").write_text(TARGET)
    env = {"EDGESLM_DATA_DIR": str(data)}
    import llama_cpp

    report: dict = {"benchmark": "GGUF: edgeslm's writer vs llama.cpp's converter; edgeslm.load vs raw llama-cpp-python "
                                 "vs ONNX; full-size Phi-3.5-mini shapes (random weights)",
                    "command": " ".join(sys.argv), "threads": physical_cores(),
                    "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t"),
                    "llama_cpp_python": llama_cpp.__version__, "decode_tokens": args.decode_tokens,
                    "repeats": args.repeats}
    gguf_bundle, onnx_bundle = args.work / "full-gguf.bundle", args.work / "full-onnx.bundle"
    if not args.decode_only:
        log("demo-model perplexity")
        report["demo_perplexity_8x512"] = demo_perplexity(args.work, data)
        log(f"perplexity: {report['demo_perplexity_8x512']}")
        log("full size: edgeslm's GGUF writer")
        report["build"] = {"edgeslm gguf writer (Q4_0)": build_ours(args.checkpoint, gguf_bundle, data)}
        log(f"ours: {report['build']}")
        log("full size: llama.cpp's converter + quantize")
        report["build"]["llama.cpp convert_hf_to_gguf f16 + llama_model_quantize Q4_0"] = build_llama(
            args.checkpoint, args.work, "full")
        log(f"build: {report['build']}")
    if not args.skip_decode:
        if not args.decode_only:
            log("full size: ONNX artifact")
            build_onnx(args.checkpoint, onnx_bundle)
        report["decode"] = decode_rows(gguf_bundle, onnx_bundle, [int(c) for c in args.contexts.split(",")],
                                       args.decode_tokens, args.repeats, env)
    if args.interleaved_context:
        log(f"interleaved edgeslm / raw runs at context {args.interleaved_context}")
        load = os.getloadavg()[0]
        out = json.loads(timed([sys.executable, "-c", INTERLEAVED, str(gguf_bundle), str(args.interleaved_context), PROMPT,
                                str(args.decode_tokens), str(max(args.repeats, 3))], env)["stdout"])
        row = {"context": args.interleaved_context, "prompt_tokens": out["prompt_tokens"], "load_average_1min": load}
        for name, runs in out["runs"].items():
            row[name] = {"decode_tok_s": round(statistics.median(r["tok_s"] for r in runs), 3),
                         "ttft_s": round(statistics.median(r["ttft_s"] for r in runs), 3), "runs": runs}
        row["edgeslm_vs_raw_decode"] = round(row["edgeslm"]["decode_tok_s"] / row["raw"]["decode_tok_s"], 3)
        report["interleaved"] = row
        log(f"interleaved: {row['edgeslm_vs_raw_decode']}")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "decode"}, indent=1))
    for context, row in report.get("decode", {}).items():
        print(context, {k: (v["decode_tok_s"], v["ttft_s"], round(v["peak_rss_bytes"] / 2**30, 2)) if isinstance(v, dict)
                        else v for k, v in row.items()})


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
