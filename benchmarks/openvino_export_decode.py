"""OpenVINO int4 (intel-core-ultra): edgeslm's export and decode against plain optimum-cli / openvino-genai.

Export, each in a fresh child process measured like build_full_size.py (wall time, peak RSS of the
process tree sampled from /proc every 0.2 s, ``ru_maxrss`` from ``os.wait4``), output sizes, ratios
edgeslm/anchor. Before each, wait (60 s polls) for ``--min-free-gb`` available and no ``edgeslm build``.
  edgeslm         the OpenVINO exporter alone: ``EXPORTER.export(ExportJob(load_source(CKPT), ...))`` with
                  the phi-3.5-mini-instruct recipe's ``openvino-int4`` settings (load_source hashes the weights)
  anchor          optimum-cli export openvino --task text-generation-with-past --weight-format int4 --sym
                  --group-size 128 --ratio 1.0 --backup-precision int8_sym (the recipe's compression)
  anchor-default  optimum-cli export openvino --task text-generation-with-past --weight-format int4
  bundle          edgeslm build --target intel-core-ultra, the target reduced to openvino-int4 through
                  EDGESLM_DATA_DIR (no ONNX build); the decode part loads it (or pass --bundle)

Decode: ``edgeslm.load(bundle, artifact="openvino-int4").stream(...)`` (shim) against a plain
``openvino_genai.LLMPipeline`` on the same folder with the engine's properties: same prompt ids
(``llm.prompt_ids``), greedy, same max_new_tokens, a ``StreamerBase`` that timestamps each token and
stops at the manifest's stop ids (text decoded once at the end). ``engine`` (diagnostic) is
``llm.engine.generate`` alone: thread + queue, no detokenization. TTFT = first token - start of
generation; tok/s = (tokens - 1) / (last - first token). Interleaved runs after a warm-up; medians.

Usage: python benchmarks/openvino_export_decode.py --model CKPT [--work DIR] [--exports LIST]
           [--export-repeats R] [--bundle B] [--max-new-tokens N] [--repeats R] [--min-free-gb G] [--out FILE]
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
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_full_size import failure_reason, host_info, measure, tree_size  # noqa: E402 - after sys.path

PACKAGES = ("edgeslm", "openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel", "optimum", "nncf",
            "torch", "transformers")
OPTIMUM_CLI = str(Path(sys.executable).with_name("optimum-cli"))
ANCHORS = {"anchor": ["--sym", "--group-size", "128", "--ratio", "1.0", "--backup-precision", "int8_sym"],
           "anchor-default": []}  # after --task text-generation-with-past --weight-format int4
PROMPT = "List every function in the os module and describe each one."  # the 21M demo model answers at length


def child_export(ckpt: str, out: Path) -> dict:
    """Run in a child: the edgeslm OpenVINO exporter alone, as the build pipeline calls it."""
    t0 = time.perf_counter()
    from edgeslm.backends.openvino.exporter import EXPORTER
    from edgeslm.builder.exporter import ExportJob
    from edgeslm.builder.source import load_source
    from edgeslm.builder.text_windows import calibration_text
    from edgeslm.config.recipes import all_recipes
    from edgeslm.config.targets import resolve_target
    from edgeslm.progress import NullProgress
    from edgeslm.registry import formats
    t1 = time.perf_counter()
    source = load_source(ckpt)
    t2 = time.perf_counter()
    settings = all_recipes()["phi-3.5-mini-instruct"].formats["openvino-int4"]
    work = out.with_name(out.name + ".work")
    shutil.rmtree(out, ignore_errors=True), shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True), work.mkdir()
    job = ExportJob(source, formats()["openvino-int4"], settings, out, work,
                    resolve_target("intel-core-ultra").planning.default_context_length,
                    calibration_text(None, None, 0))
    result = EXPORTER.export(job, NullProgress())  # runs check_available and check_settings first
    shutil.rmtree(work, ignore_errors=True)
    return {"import_s": t1 - t0, "load_source_s": t2 - t1, "export_s": time.perf_counter() - t2,
            "ir_weights": result.quantization["ir_weights"]}


def wait_for_memory(min_gb: float) -> dict:
    while True:
        avail = psutil.virtual_memory().available
        builds = subprocess.run(["pgrep", "-af", "edgeslm build"], check=False, capture_output=True,
                                text=True).stdout.strip()
        if avail >= min_gb * 1e9 and not builds:
            return {"mem_available_before_bytes": avail}
        print(f"  waiting: {avail / 1e9:.1f} GB available (need {min_gb}); builds: {builds or 'none'}", flush=True)
        time.sleep(60)


def one_export(kind: str, ckpt: Path, work: Path, min_gb: float) -> dict:
    out = work / kind
    shutil.rmtree(out, ignore_errors=True)
    if kind == "edgeslm":
        cmd = [sys.executable, __file__, "--child-export", str(out), "--model", str(ckpt)]
    elif kind in ANCHORS:  # a local folder needs --task
        cmd = [OPTIMUM_CLI, "export", "openvino", "--model", str(ckpt), "--task", "text-generation-with-past",
               "--weight-format", "int4", *ANCHORS[kind], str(out)]
    else:  # bundle: the real CLI, intel-core-ultra restricted to its OpenVINO artifact
        data = work / "data"
        (data / "targets").mkdir(parents=True, exist_ok=True)
        text = (HERE.parent / "targets" / "intel-core-ultra.toml").read_text()
        (data / "targets" / "intel-core-ultra.toml").write_text(
            text.replace('formats = ["openvino-int4", "onnx-int4-cpu"]', 'formats = ["openvino-int4"]'))
        os.environ["EDGESLM_DATA_DIR"] = str(data)  # inherited by the child only; popped below
        cmd = [sys.executable, "-m", "edgeslm", "build", "--target", "intel-core-ultra", "--model", str(ckpt),
               "--out", str(out), "--force", "--json"]
    print(f"export {kind}: {' '.join(cmd)}", flush=True)
    try:
        run = {"command": cmd, **wait_for_memory(min_gb), **measure(cmd)}
    finally:
        os.environ.pop("EDGESLM_DATA_DIR", None)
    stdout, stderr = run.pop("stdout"), run.pop("stderr")
    if run["rc"]:
        run.update(failed=failure_reason(run["rc"]), stderr_tail=stderr[-3000:])
        return run
    folder = out / "artifacts" / "openvino-int4" if kind == "bundle" else out
    if kind == "edgeslm":
        run["child"] = json.loads(stdout.strip().splitlines()[-1])
    elif kind == "bundle":
        run["build_seconds"] = json.loads(stdout).get("seconds")
    else:
        from edgeslm.backends.openvino.ir_inspection import weight_compression_stats
        run["ir_weights"] = weight_compression_stats(folder / "openvino_model.xml")
    run["model_bin_bytes"] = (folder / "openvino_model.bin").stat().st_size
    run["total_bytes"], run["files"] = tree_size(folder)
    print(f"  {run['wall_s']:.1f} s, peak RSS {run['peak_rss_sampled_bytes'] / 1e9:.2f} GB (ru_maxrss "
          f"{run['ru_maxrss_bytes'] / 1e9:.2f}), bin {run['model_bin_bytes'] / 1e9:.3f} GB", flush=True)
    return run


def plain_run(pipe, ids: list[int], n: int, stop: frozenset) -> dict:
    import numpy as np
    import openvino as ov
    import openvino_genai as genai
    config = genai.GenerationConfig()
    config.max_new_tokens, config.apply_chat_template, config.do_sample = n, False, False
    times, toks = [], []

    class Streamer(genai.StreamerBase):
        def write(self, token):
            now = time.perf_counter()
            for t in (token if isinstance(token, list) else [token]):
                times.append(now), toks.append(int(t))
            return genai.StreamingStatus.STOP if toks[-1] in stop else genai.StreamingStatus.RUNNING

        def end(self):
            return None

    start = time.perf_counter()
    res = pipe.generate(ov.Tensor(np.array([ids], dtype=np.int64)), config, Streamer())
    total = time.perf_counter() - start
    count = next((i for i, t in enumerate(toks) if t in stop), len(toks))
    pm = res.perf_metrics
    return {"tokens": count, "ttft_s": times[0] - start if times else 0.0, "total_s": total,
            "tok_s": (count - 1) / (times[-1] - times[0]) if count > 1 else 0.0, "ids": toks[:count],
            "text": pipe.get_tokenizer().decode(toks[:count], skip_special_tokens=True),
            "genai_ttft_ms": pm.get_ttft().mean, "genai_tpot_ms": pm.get_tpot().mean,
            "genai_throughput_tok_s": pm.get_throughput().mean}


def engine_run(llm, ids: list[int], n: int) -> dict:
    from edgeslm.runtime.generation import GenerationOptions
    times, count = [], 0
    start = time.perf_counter()
    tokens = llm.engine.generate(ids, GenerationOptions(max_new_tokens=n), min(len(ids) + n, llm.context_tokens))
    for token in tokens:
        times.append(time.perf_counter())
        if token in llm.stop_ids:
            break
        count += 1
        if count >= n:
            break
    tokens.close()
    return {"tokens": count, "ttft_s": times[0] - start, "total_s": time.perf_counter() - start,
            "tok_s": (count - 1) / (times[-1] - times[0]) if count > 1 else 0.0}


def shim_run(llm, messages: list[dict], n: int) -> dict:
    stream = llm.stream(messages, max_new_tokens=n)
    for _ in stream:
        pass
    r = stream.result
    return {"tokens": r.usage.completion_tokens, "ttft_s": r.time_to_first_token_s, "tok_s": r.decode_tokens_per_s,
            "total_s": r.total_s, "finish": r.finish_reason, "text": r.text}


def decode(bundle: Path, n: int, repeats: int, prompt: str, kinds: list[str], share: bool) -> dict:
    import openvino_genai as genai

    import edgeslm
    llm = edgeslm.load(bundle, artifact="openvino-int4")
    messages = [{"role": "user", "content": prompt}]
    ids = llm.prompt_ids(messages)
    folder = llm._opened.folder / llm.candidate.artifact.path
    props = dict(llm.engine.properties)
    pipe = llm.engine.pipeline if share else genai.LLMPipeline(str(folder), "CPU", **props)
    runs: dict[str, list] = {k: [] for k in kinds}
    for i in range(repeats + 1):  # the first round is the warm-up
        for kind in kinds:
            run = (plain_run(pipe, ids, n, llm.stop_ids) if kind == "plain" else engine_run(llm, ids, n)
                   if kind == "engine" else shim_run(llm, messages, n))
            if i:
                runs[kind].append(run)
            print(f"  {'warm-up' if not i else f'repeat {i}'} {kind:6s}: {run['tokens']} tokens, "
                  f"TTFT {run['ttft_s'] * 1e3:8.1f} ms, {run['tok_s']:7.2f} tok/s", flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("tok_s", "ttft_s", "total_s", "tokens")}
           for k, v in runs.items()}
    if "plain" in runs:
        med["plain"].update({m: statistics.median(r[m] for r in runs["plain"])
                             for m in ("genai_ttft_ms", "genai_tpot_ms", "genai_throughput_tok_s")})
    same_text = ("plain" in runs and "shim" in runs
                 and all(p["text"] == s["text"] for p, s in zip(runs["plain"], runs["shim"])))
    costs, dec = [], llm.engine.text_decoder()  # the shim's incremental detokenization, per token, alone
    for t in runs["plain"][-1]["ids"] if "plain" in runs else []:
        t0 = time.perf_counter()
        dec(t)
        costs.append(1e3 * (time.perf_counter() - t0))
    diag = {"text_decoder_ms_per_token": costs, "text_decoder_ms_mean": statistics.mean(costs) if costs else 0.0}
    for v in runs.values():  # keep the text of the first repeat only
        for j, r in enumerate(v):
            r.pop("ids", None)
            if j:
                r.pop("text", None)
    llm.close()
    ratios = {k: {"tok_s": med[k]["tok_s"] / med["plain"]["tok_s"], "ttft_s": med[k]["ttft_s"] / med["plain"]["ttft_s"]}
              for k in kinds if k != "plain" and "plain" in med and med["plain"]["tok_s"]}
    return {"bundle": str(bundle), "prompt_tokens": len(ids), "max_new_tokens": n, "properties": props,
            "plain_shares_shim_pipeline": share, "repeats": repeats, "kinds": kinds, "runs": runs,
            "median": med, "same_text": same_text, "ratio_over_plain": ratios, "diagnostics": diag}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="Phi-3 checkpoint folder")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeslm-ov-bench")
    ap.add_argument("--exports", default="edgeslm,anchor,anchor-default,bundle",
                    help="comma list of edgeslm, anchor, anchor-default, bundle ('' = none)")
    ap.add_argument("--export-repeats", type=int, default=1)
    ap.add_argument("--bundle", type=Path, help="decode this bundle (default: WORK/bundle if built)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--kinds", default="plain,shim,engine", help="decode loops, interleaved in this order")
    ap.add_argument("--share-pipeline", action="store_true", help="plain runs on the shim's own LLMPipeline")
    ap.add_argument("--min-free-gb", type=float, default=0.0, help="wait for this much available RAM per export")
    ap.add_argument("--keep", action="store_true", help="keep the exported folders")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "openvino_export_decode.json")
    ap.add_argument("--child-export", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_export:
        print(json.dumps(child_export(str(args.model), args.child_export)))
        return
    host = host_info()
    from edgeslm.package_versions import version_of
    host["packages"] = {p: version_of(p) for p in PACKAGES}
    report: dict = {"command": " ".join(sys.argv), "model": str(args.model), "host": host,
                    "date": time.strftime("%Y-%m-%d %H:%M:%S"), "exports": {}}
    exports, med = report["exports"], report.setdefault("export_median", {})
    wanted = [k for k in args.exports.split(",") if k]
    for i in range(args.export_repeats):  # interleaved; the bundle (needed for decode) is built once
        for kind in [k for k in wanted if k != "bundle" or i == 0]:
            exports.setdefault(kind, []).append(one_export(kind, args.model, args.work, args.min_free_gb))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")  # keep partial results
    keys = ("wall_s", "peak_rss_sampled_bytes", "ru_maxrss_bytes", "model_bin_bytes", "total_bytes")
    if exports:
        print(f"\n{'export (median)':<16}{'runs':>5}{'wall s':>8}{'peak RSS GB':>13}{'ru_maxrss GB':>14}{'bin GB':>9}"
              f"{'total GB':>10}")
        for kind, runs in exports.items():
            ok = [r for r in runs if "failed" not in r]
            if not ok:
                print(f"{kind:<16} FAILED ({runs[0]['failed']})")
                continue
            med[kind] = m = {k: statistics.median(r[k] for r in ok) for k in keys}
            print(f"{kind:<16}{len(ok):5d}{m['wall_s']:8.1f}{m['peak_rss_sampled_bytes'] / 1e9:13.2f}"
                  f"{m['ru_maxrss_bytes'] / 1e9:14.2f}{m['model_bin_bytes'] / 1e9:9.3f}{m['total_bytes'] / 1e9:10.3f}")
        for anchor in ("anchor", "anchor-default"):
            if "edgeslm" in med and anchor in med:
                report[f"ratio_edgeslm_over_{anchor}"] = rat = {k: med["edgeslm"][k] / med[anchor][k] for k in keys}
                print(f"edgeslm/{anchor}: " + ", ".join(f"{k} {v:.3f}" for k, v in rat.items()))
    bundle = args.bundle or (args.work / "bundle" if "bundle" in med else None)
    kinds = [k for k in args.kinds.split(",") if k]
    if bundle and kinds:
        print(f"\ndecode: {bundle}, {args.max_new_tokens} new tokens, {args.repeats} repeats, kinds {kinds}")
        report["decode"] = d = decode(bundle, args.max_new_tokens, args.repeats, args.prompt, kinds,
                                      args.share_pipeline)
        print(f"\n{'':8s}{'tokens':>7s}{'tok/s':>9s}{'TTFT ms':>10s}{'tok/s ratio':>13s}{'TTFT ratio':>12s}"
              f"   (prompt {d['prompt_tokens']} tokens, {d['properties']}, same text: {d['same_text']})")
        for k, m in d["median"].items():
            r = d["ratio_over_plain"].get(k, {"tok_s": 1.0, "ttft_s": 1.0})
            print(f"{k:8s}{m['tokens']:7.0f}{m['tok_s']:9.2f}{m['ttft_s'] * 1e3:10.1f}{r['tok_s']:13.3f}{r['ttft_s']:12.3f}")
        if "plain" in d["median"]:
            p = d["median"]["plain"]
            print(f"plain, genai perf_metrics: TTFT {p['genai_ttft_ms']:.1f} ms, TPOT {p['genai_tpot_ms']:.2f} ms, "
                  f"{p['genai_throughput_tok_s']:.2f} tok/s; shim text decoder alone: "
                  f"{d['diagnostics']['text_decoder_ms_mean']:.3f} ms/token")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
