"""Decode speed and memory of ``edgeslm.load(bundle)`` against a plain onnxruntime-genai loop.

Speed (one process holding both): the bundle is loaded with ``edgeslm.load`` (the shim) and the same
artifact folder is loaded again with ``og.Config`` + the session options the engine sets
(``intra_op_num_threads`` = physical cores, ``inter_op_num_threads`` = 1, providers cleared),
``og.Model`` and ``og.Tokenizer`` (the anchor). Both get the same prompt ids (``llm.prompt_ids``) and
generate greedily up to N new tokens; the anchor is the canonical og loop (``generate_next_token``,
``get_next_tokens``, a tokenizer stream ``decode`` per token). Both use the same definitions:
TTFT = first token time - start of generation (GeneratorParams), decode tok/s = (tokens - 1) /
(last token time - first token time). Runs are interleaved in ABBA order (a warm-up pair, then
plain, shim, shim, plain, ...) so a slow drift cancels; medians, shim/plain ratios of the medians and
the median of per-repeat ratios go to the JSON file, with the CPU time other processes took per run.

Memory (``--rss-contexts 512,2048``), run first while this process is small (a child's
``ru_maxrss`` starts at its parent's peak): per context a child builds a user message whose prompt
is CTX-64 tokens (eval text repeated, cut by token count), then a fresh child runs the plain og loop
(``max_length=CTX``) on those ids and another fresh child ``edgeslm.load(bundle, context=CTX)`` on
the message; both generate 32 tokens and report peak RSS (``VmHWM``; ``ru_maxrss`` too), RSS
after load, TTFT (≈ prefill of the long prompt) and decode tok/s.

Shared machines: before each timed run the script waits (``--quiet-wait``) until other processes use
< 5% of the CPUs, and redoes a run during which they took more (``--retries``); every run records
the CPU seconds other processes took while it was timed.

``--share-model`` (diagnostic) runs the plain loop on the shim's own og.Model, so the speed ratio
measures only the Python wrapper.

Usage: python benchmarks/runtime_decode.py BUNDLE [--max-new-tokens 128] [--repeats 5]
           [--rss-contexts 512,2048] [--rss-new-tokens 32] [--share-model] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
EVAL_TEXT = HERE.parent / "examples" / "eval" / "docs-heldout.txt"
PACKAGES = ("edgeslm", "onnxruntime-genai", "onnxruntime", "numpy")
PROMPT = ("Explain in detail how Python's os.path.join works, with several examples, the edge cases "
          "on Windows and POSIX, and how it differs from pathlib.Path.joinpath.")


def proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_mark() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process): their deltas' difference
    is CPU time other processes took during a run, i.e. how disturbed it was."""
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:9]]
    own = os.times()
    return (sum(t) - t[3] - t[4]) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def wait_quiet(limit_s: float, window_s: float = 2.0) -> float:
    """Wait (at most limit_s) until other processes use < 5% of the CPUs over a window; seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        busy0, own0 = cpu_mark()
        time.sleep(window_s)
        busy1, own1 = cpu_mark()
        if (busy1 - busy0) - (own1 - own0) < 0.05 * window_s * os.cpu_count():
            break
    return time.perf_counter() - start


def disturbed(run: dict) -> bool:
    """Other processes took more than 5% of the CPUs (and > 0.05 CPU s) while this run was timed."""
    return run["other_processes_cpu_s"] > max(0.05, 0.05 * run["total_s"] * os.cpu_count())


def open_plain(artifact_dir: Path, threads: int):
    """The anchor: og.Config with exactly the engine's session options."""
    import onnxruntime_genai as og
    config = og.Config(str(artifact_dir))
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": max(1, threads), "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    return model, og.Tokenizer(model)


def plain_run(model, tokenizer, ids: list[int], n: int, max_length: int, stop: frozenset) -> dict:
    import onnxruntime_genai as og
    start = time.perf_counter()
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=max_length, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    decode, texts, count, first = tokenizer.create_stream().decode, [], 0, start
    last = start
    while not generator.is_done():
        generator.generate_next_token()
        token = int(generator.get_next_tokens()[0])
        now = time.perf_counter()
        if count == 0:
            first = now
        last = now
        if token in stop:
            break
        count += 1
        texts.append(decode(token))
        if count >= n:
            break
    del generator
    total = time.perf_counter() - start
    return {"tokens": count, "ttft_s": first - start, "total_s": total, "text": "".join(texts),
            "tok_s": (count - 1) / (last - first) if count > 1 and last > first else 0.0}


def shim_run(llm, messages: list[dict], n: int) -> dict:
    start = time.perf_counter()
    stream = llm.stream(messages, max_new_tokens=n)
    for _ in stream:
        pass
    wall = time.perf_counter() - start
    r = stream.result
    return {"tokens": r.usage.completion_tokens, "ttft_s": r.time_to_first_token_s, "tok_s": r.decode_tokens_per_s,
            "total_s": r.total_s, "wall_incl_encode_s": wall, "finish": r.finish_reason, "text": r.text}


def host_info() -> dict:
    from edgeslm.runtime.host_probe import probe_host
    host = probe_host()
    return {"cpu_model": host.cpu_model, "logical_cores": host.logical_cores, "physical_cores": host.physical_cores,
            "ram_total_bytes": host.ram_total_bytes, "ram_available_bytes": host.ram_available_bytes,
            "cpu_features": list(host.cpu_features), "platform": platform.platform(),
            "python": platform.python_version(), "packages": {p: _ver(p) for p in PACKAGES}}


def _ver(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def speed(bundle: Path, n: int, repeats: int, prompt: str, share: bool, retries: int, quiet_s: float) -> dict:
    import edgeslm
    from edgeslm.runtime.host_probe import probe_host
    threads = probe_host().physical_cores
    llm = edgeslm.load(bundle)
    messages = [{"role": "user", "content": prompt}]
    ids = llm.prompt_ids(messages)
    model, tokenizer = ((llm.engine.model, llm.engine.tokenizer) if share  # diagnostic: loop overhead only
                        else open_plain(llm._opened.folder / llm.candidate.artifact.path, threads))
    max_length = min(len(ids) + n, llm.context_tokens)  # what the engine asks for
    runs: dict[str, list] = {"plain": [], "shim": []}
    for i in range(repeats + 1):  # the first pair is the warm-up
        for kind in (("plain", "shim") if i % 2 else ("shim", "plain")):  # ABBA: a slow drift cancels out
            for attempt in range(1, retries + 2):  # a run that other processes disturbed is redone
                waited = wait_quiet(quiet_s)
                busy0, own0 = cpu_mark()
                run = (plain_run(model, tokenizer, ids, n, max_length, llm.stop_ids) if kind == "plain"
                       else shim_run(llm, messages, n))
                busy1, own1 = cpu_mark()
                run.update(other_processes_cpu_s=max(0.0, (busy1 - busy0) - (own1 - own0)), attempt=attempt,
                           waited_for_quiet_s=waited)
                if not disturbed(run):
                    break
            if i:
                runs[kind].append(run)
            print(f"  {'warm-up' if not i else f'repeat {i}'} {kind:5s}: {run['tokens']} tokens, "
                  f"TTFT {run['ttft_s'] * 1e3:8.1f} ms, {run['tok_s']:7.2f} tok/s, "
                  f"other processes {run['other_processes_cpu_s']:.2f} CPU s (attempt {run['attempt']})", flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("tok_s", "ttft_s", "total_s", "tokens")}
           for k, v in runs.items()}
    # the shim drops SentencePiece's word-start space before the first word; otherwise the text must match
    same_text = all(p["text"].lstrip(" ") == s["text"] for p, s in zip(runs["plain"], runs["shim"]))
    for v in runs.values():
        for r in v[1:]:
            r.pop("text")
    llm.close()
    del model, tokenizer
    return {"prompt_tokens": len(ids), "max_new_tokens": n, "max_length": max_length, "threads": threads,
            "plain_shares_shim_model": share,
            "repeats": repeats, "runs": runs, "median": med, "same_text": same_text,
            "ratio_shim_over_plain": {"tok_s": med["shim"]["tok_s"] / med["plain"]["tok_s"],
                                      "ttft_s": med["shim"]["ttft_s"] / med["plain"]["ttft_s"]},
            "median_paired_ratio": {m: statistics.median(s[m] / p[m] for p, s in zip(runs["plain"], runs["shim"]))
                                    for m in ("tok_s", "ttft_s")}}


def child_prompt(bundle: Path, ctx: int, path: Path) -> dict:
    """Writes a user message whose prompt ids are ctx-64 tokens long, the ids, artifact folder, stop ids."""
    import edgeslm
    llm = edgeslm.load(bundle, context=ctx)
    target = ctx - 64
    text = EVAL_TEXT.read_text(encoding="utf-8")[: ctx * 8]
    while len(llm.engine.encode(text)) < target + 64:
        text += "\n" + text
    body = llm.engine.encode(text)
    k = target - (len(llm.prompt_ids([{"role": "user", "content": "x"}])) - 1)
    for _ in range(8):  # decode/re-encode may shift the count a little: adjust k until it fits
        content = llm.engine.tokenizer.decode(body[:k])
        got = len(llm.prompt_ids([{"role": "user", "content": content}]))
        if got == target:
            break
        k += target - got
    ids = llm.prompt_ids([{"role": "user", "content": content}])
    path.write_text(json.dumps({"content": content, "ids": ids, "stop": sorted(llm.stop_ids),
                                "artifact_dir": str(llm._opened.folder / llm.candidate.artifact.path)}))
    return {"prompt_tokens": len(ids)}


def child_run(kind: str, bundle: Path, ctx: int, n: int, path: Path, threads: int) -> dict:
    prompt = json.loads(path.read_text())
    rss0, t = proc_status("VmRSS"), time.perf_counter()
    if kind == "shim":
        import edgeslm
        llm = edgeslm.load(bundle, context=ctx)
    else:  # the anchor imports nothing of edgeslm
        model, tokenizer = open_plain(Path(prompt["artifact_dir"]), threads)
    load_s, rss_load = time.perf_counter() - t, proc_status("VmRSS")
    busy0, own0 = cpu_mark()
    if kind == "shim":
        messages = [{"role": "user", "content": prompt["content"]}]
        assert llm.prompt_ids(messages) == prompt["ids"]
        run = shim_run(llm, messages, n)
    else:
        run = plain_run(model, tokenizer, prompt["ids"], n, ctx, frozenset(prompt["stop"]))
    busy1, own1 = cpu_mark()
    run["other_processes_cpu_s"] = max(0.0, (busy1 - busy0) - (own1 - own0))
    run.pop("text")
    return {"prompt_tokens": len(prompt["ids"]), "load_s": load_s, "rss_before_load_bytes": rss0,
            "rss_after_load_bytes": rss_load, **run}


def memory(bundle: Path, contexts: list[int], n: int, threads: int, out: Path, retries: int, quiet_s: float) -> dict:
    """Runs before anything is loaded here: a child's ru_maxrss starts at its parent's peak RSS."""
    results = {}
    for ctx in contexts:
        prompt_file, row = out.with_suffix(f".prompt{ctx}.json"), {}
        for kind in ("prompt", "plain", "shim"):
            cmd = [sys.executable, __file__, str(bundle), "--child", kind, "--ctx", str(ctx),
                   "--rss-new-tokens", str(n), "--prompt-file", str(prompt_file), "--threads", str(threads)]
            for attempt in range(1, retries + 2):  # noqa: B007 - read after the loop
                waited = wait_quiet(quiet_s) if kind != "prompt" else 0.0
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode:
                    raise SystemExit(f"child {kind} ctx={ctx} failed:\n{proc.stderr[-3000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                if kind == "prompt" or not disturbed(r):
                    break
            if kind == "prompt":
                continue
            row[kind] = r
            r.update(attempt=attempt, waited_for_quiet_s=waited)
            print(f"  ctx {ctx:5d} {kind:5s}: peak RSS {r['vm_hwm_bytes'] / 2**20:8.1f} MiB (ru_maxrss "
                  f"{r['ru_maxrss_bytes'] / 2**20:.1f}, after load {r['rss_after_load_bytes'] / 2**20:.1f}), "
                  f"prompt {r['prompt_tokens']}, TTFT {r['ttft_s']:.2f} s, {r['tok_s']:.2f} tok/s, "
                  f"other processes {r['other_processes_cpu_s']:.1f} CPU s (attempt {attempt})", flush=True)
        prompt_file.unlink(missing_ok=True)
        p, s = row["plain"], row["shim"]
        row["ratio_shim_over_plain"] = {"peak_rss": s["vm_hwm_bytes"] / p["vm_hwm_bytes"],
                                        "rss_after_load": s["rss_after_load_bytes"] / p["rss_after_load_bytes"],
                                        "ttft_s": s["ttft_s"] / p["ttft_s"]}
        results[str(ctx)] = row
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--rss-contexts", default="", help="comma-separated contexts, e.g. 512,2048")
    ap.add_argument("--rss-new-tokens", type=int, default=32)
    ap.add_argument("--share-model", action="store_true",
                    help="diagnostic: the plain loop runs on the shim's own og.Model (isolates Python overhead)")
    ap.add_argument("--retries", type=int, default=2,
                    help="redo a run during which other processes took > 5%% of the CPUs, up to this often")
    ap.add_argument("--quiet-wait", type=float, default=300.0,
                    help="before each run, wait up to this many seconds for the other processes to go quiet")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "runtime_decode.json")
    ap.add_argument("--child", choices=("prompt", "shim", "plain"), help=argparse.SUPPRESS)
    ap.add_argument("--ctx", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--prompt-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = (child_prompt(args.bundle, args.ctx, args.prompt_file) if args.child == "prompt" else
               child_run(args.child, args.bundle, args.ctx, args.rss_new_tokens, args.prompt_file, args.threads))
        res.update(ru_maxrss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   vm_hwm_bytes=proc_status("VmHWM"))
        print(json.dumps(res))
        return
    report = {"bundle": str(args.bundle), "host": host_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.rss_contexts:  # first, while this process is still small (see memory())
        contexts = [int(c) for c in args.rss_contexts.split(",")]
        print(f"memory: fresh process per configuration, contexts {contexts}, {args.rss_new_tokens} new tokens")
        report["memory"] = memory(args.bundle, contexts, args.rss_new_tokens, report["host"]["physical_cores"],
                                  args.out, args.retries, args.quiet_wait)
    print(f"speed: {args.bundle}, {args.max_new_tokens} new tokens, {args.repeats} repeats")
    report["speed"] = sp = speed(args.bundle, args.max_new_tokens, args.repeats, args.prompt, args.share_model,
                                 args.retries, args.quiet_wait)
    m, r = sp["median"], sp["ratio_shim_over_plain"]
    print(f"\n{'':6s} {'tokens':>6s} {'tok/s':>8s} {'TTFT ms':>9s}   (prompt {sp['prompt_tokens']} tokens, "
          f"{sp['threads']} threads, same text: {sp['same_text']})")
    for k in ("plain", "shim"):
        print(f"{k:6s} {m[k]['tokens']:6.0f} {m[k]['tok_s']:8.2f} {m[k]['ttft_s'] * 1e3:9.1f}")
    print(f"{'ratio':6s} {'':6s} {r['tok_s']:8.3f} {r['ttft_s']:9.3f}   (shim/plain; goal tok/s >= 0.97)")
    q = sp["median_paired_ratio"]
    print(f"{'paired':6s} {'':6s} {q['tok_s']:8.3f} {q['ttft_s']:9.3f}   (median of per-repeat shim/plain)")
    if args.rss_contexts:
        print(f"\n{'ctx':>5s} {'plain peak MiB':>14s} {'shim peak MiB':>13s} {'ratio':>6s} {'plain TTFT s':>12s} "
              f"{'shim TTFT s':>11s} {'ratio':>6s}")
        for ctx, row in report["memory"].items():
            p, s, q = row["plain"], row["shim"], row["ratio_shim_over_plain"]
            print(f"{ctx:>5s} {p['vm_hwm_bytes'] / 2**20:14.1f} {s['vm_hwm_bytes'] / 2**20:13.1f} "
                  f"{q['peak_rss']:6.3f} {p['ttft_s']:12.2f} {s['ttft_s']:11.2f} {q['ttft_s']:6.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
