"""llama.cpp reference for a Phi-3.5-mini checkpoint: convert, quantize to Q4_0, measure TTFT / decode / perplexity.

Run with the benchmark venv (``bash benchmarks/setup_bench_env.sh``): ``benchmarks/.venv/bin/python``.

Steps (each skipped when its output already exists in ``--work``):
  convert   llama.cpp's own converter (``benchmarks/.venv/llama.cpp/convert_hf_to_gguf.py``, from the
            llama-cpp-python sdist) writes ``<name>-f16.gguf``; LongRoPE short/long factors become the
            ``rope_factors_short/long`` tensors. Its wall time and peak RSS (``ru_maxrss``) are reported.
  quantize  ``llama_cpp.llama_model_quantize`` (``llama_model_quantize_default_params``, ftype
            ``LLAMA_FTYPE_MOSTLY_Q4_0``: llama.cpp's default Q4_0 recipe) writes ``<name>-Q4_0.gguf``;
            the f16 file is then deleted unless ``--keep-f16``.
  speed     ``llama_cpp.Llama(path, n_ctx, n_threads=<physical cores>, n_batch=512)``; a prompt of
            ``--prompt-tokens`` fixed pseudo-random ids (content is irrelevant), then greedy decoding (argmax
            of the last logits, EOS ignored) of ``--decode-tokens`` new tokens. TTFT = prompt eval + first
            argmax; decode tok/s = (tokens - 1) / (last token time - first token time), the definitions of
            runtime_decode.py. One untimed warm-up run, then ``--repeats`` runs; medians are reported.
  perplexity (``--perplexity-text``) the text tokenised by the GGUF's own tokenizer (no BOS, special tokens
            parsed), ``--perplexity-windows`` consecutive non-overlapping windows of ``--window-tokens``;
            each window is evaluated alone with ``logits_all=True`` and the NLL of tokens 1..T-1 computed from
            the logits with numpy (float64 log-softmax): the window convention of edgeslm's measured quality.

llama.cpp picks the LongRoPE factors by context size: short for n_ctx <= original_max_position_embeddings
(4096), long above (for every position, unlike transformers, which switches on the sequence length).
On AVX2/AVX-512 CPUs Q4_0 weights are repacked at load (q4_0_8x8) into a second buffer, so the
process RSS is about twice the GGUF size.

Output: one JSON object on stdout; progress goes to stderr.

Usage: benchmarks/.venv/bin/python benchmarks/llama_cpp_reference.py --checkpoint DIR --work DIR
           [--prompt-tokens 128] [--decode-tokens 64] [--repeats 3] [--n-ctx 2048] [--threads N] [--keep-f16]
           [--perplexity-text FILE --perplexity-windows 4 --window-tokens 256]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CONVERTER = HERE / ".venv" / "llama.cpp" / "convert_hf_to_gguf.py"


def log(msg: str) -> None:
    print(f"[llama_cpp_reference] {msg}", file=sys.stderr, flush=True)


def physical_cores() -> int:
    """Distinct (physical id, core id) pairs of /proc/cpuinfo among the CPUs this process may run on."""
    allowed, cores = os.sched_getaffinity(0), set()
    try:
        for block in Path("/proc/cpuinfo").read_text().split("\n\n"):
            info = dict((s.strip() for s in line.split(":", 1)) for line in block.splitlines() if ":" in line)
            if "processor" in info and int(info["processor"]) in allowed:
                cores.add((info.get("physical id"), info.get("core id", info["processor"])))
    except OSError:
        pass
    return len(cores) or len(allowed)


def convert(ckpt: Path, out: Path, converter: Path) -> dict:
    """HF safetensors -> GGUF f16 with llama.cpp's converter in a child process (its peak RSS measured)."""
    tmp = out.with_suffix(".partial")
    cmd = [sys.executable, str(converter), str(ckpt), "--outfile", str(tmp), "--outtype", "f16"]
    log("converting: " + " ".join(cmd))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    tmp.rename(out)
    return {"convert_s": round(time.perf_counter() - t0, 1),
            "convert_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}


def quantize(src: Path, out: Path, threads: int) -> dict:
    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = threads
    tmp = out.with_suffix(".partial")
    log(f"quantizing {src.name} -> {out.name} (Q4_0, {threads} threads)")
    t0 = time.perf_counter()
    if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize failed for {src}")
    tmp.rename(out)
    return {"quantize_s": round(time.perf_counter() - t0, 1)}


def gguf_summary(path: Path) -> dict:
    """Tensor types and the LongRoPE factor tensors of a GGUF file (gguf-py reader, memory-mapped)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    rope = {t.name: {"n": int(t.n_elements), "first": [round(float(x), 4) for x in np.asarray(t.data).ravel()[:3]],
                     "last": round(float(np.asarray(t.data).ravel()[-1]), 4)}
            for t in reader.tensors if t.name.startswith("rope_factors")}
    field = reader.fields.get("phi3.rope.scaling.attn_factor")
    attn = float(field.parts[field.data[0]][0]) if field else None
    return {"tensor_types": types, "rope_factor_tensors": rope, "rope_attn_factor": attn}


def greedy_run(llm, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(TTFT s, decode tok/s) of one greedy generation from an empty KV cache."""
    import llama_cpp

    n_vocab = llm.n_vocab()

    def next_token() -> int:
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).argmax())

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    tok = next_token()
    t_first = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([tok])
        tok = next_token()
    t_last = time.perf_counter()
    return t_first - t0, (new_tokens - 1) / (t_last - t_first) if new_tokens > 1 else float("nan")


def perplexity(model: Path, text: Path, windows: int, length: int, threads: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(str(model), n_ctx=length, n_batch=512, n_threads=threads, logits_all=True, verbose=False)
    ids = llm.tokenize(text.read_text(encoding="utf-8").encode(), add_bos=False, special=True)
    if len(ids) < windows * length:
        raise SystemExit(f"{text} has {len(ids)} tokens: too short for {windows} windows of {length}")
    nll = []
    for w in range(windows):
        window = ids[w * length:(w + 1) * length]
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[:length - 1], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        logz = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
        nll.append(float((logz - logits[np.arange(length - 1), window[1:]]).sum()))
        log(f"perplexity window {w + 1}/{windows}: nll/token {nll[-1] / (length - 1):.4f}")
    llm.close()
    return {"text": text.name, "text_tokens": len(ids), "windows": windows, "window_tokens": length,
            "window_nll": [round(x, 4) for x in nll],
            "perplexity": round(float(np.exp(sum(nll) / (windows * (length - 1)))), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="Hugging Face Phi-3.5-mini folder (safetensors)")
    ap.add_argument("--work", type=Path, required=True, help="folder for the GGUF files")
    ap.add_argument("--converter", type=Path, default=CONVERTER)
    ap.add_argument("--keep-f16", action="store_true")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs (0: no speed measurement)")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--perplexity-text", type=Path)
    ap.add_argument("--perplexity-windows", type=int, default=4)
    ap.add_argument("--window-tokens", type=int, default=256)
    args = ap.parse_args()

    import llama_cpp
    from llama_cpp import Llama

    args.work.mkdir(parents=True, exist_ok=True)
    name = args.checkpoint.resolve().name
    f16, q4 = args.work / f"{name}-f16.gguf", args.work / f"{name}-Q4_0.gguf"
    report: dict = {"engine": "llama.cpp", "quant": "Q4_0", "checkpoint": str(args.checkpoint),
                    "llama_cpp_python": llama_cpp.__version__, "convert_s": None, "quantize_s": None}
    if not q4.exists():
        if not f16.exists():
            report.update(convert(args.checkpoint, f16, args.converter))
        report["f16_gguf_bytes"] = f16.stat().st_size
        report.update(quantize(f16, q4, args.threads))
    if f16.exists() and not args.keep_f16:
        f16.unlink()
    report.update({"gguf": str(q4), "gguf_bytes": q4.stat().st_size, **gguf_summary(q4)})
    report.update({"threads": args.threads, "n_ctx": args.n_ctx, "n_batch": 512,
                   "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens})

    if args.repeats > 0:
        if args.prompt_tokens + args.decode_tokens > args.n_ctx:
            raise SystemExit("--prompt-tokens + --decode-tokens exceed --n-ctx")
        t0 = time.perf_counter()
        llm = Llama(str(q4), n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
                    n_batch=512, verbose=False)
        report["load_s"] = round(time.perf_counter() - t0, 2)
        rng = np.random.default_rng(0)
        prompt = [llm.token_bos()] + rng.integers(100, llm.n_vocab() - 100, args.prompt_tokens - 1).tolist()
        greedy_run(llm, prompt[:16], 4)  # warm-up: pages the weights in, allocates the compute buffers
        runs = []
        for r in range(args.repeats):
            ttft, tps = greedy_run(llm, prompt, args.decode_tokens)
            runs.append({"ttft_s": round(ttft, 4), "decode_tok_s": round(tps, 3)})
            log(f"repeat {r + 1}/{args.repeats}: TTFT {ttft:.3f} s, decode {tps:.2f} tok/s")
        llm.close()
        report["ttft_s"] = statistics.median(x["ttft_s"] for x in runs)
        report["decode_tok_s"] = statistics.median(x["decode_tok_s"] for x in runs)
        report["repeats"] = runs
    if args.perplexity_text:
        report["perplexity"] = perplexity(q4, args.perplexity_text, args.perplexity_windows, args.window_tokens,
                                          args.threads)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
