"""OpenVINO int4 export in little RAM (issue #22): the onnx-streaming route against optimum-intel, one run.

On a full-size random Phi-3.5-mini (``make_random_checkpoint.py``, made in a child if missing), one
after the other (never in parallel: optimum-intel needs ~11 GB):

  onnx-streaming  edgeslm build --target intel-core-ultra --no-eval  (the recipe's default exporter)
  optimum-intel   the same with --set openvino-int4.exporter=optimum-intel
  optimum-cli     plain ``optimum-cli export openvino --weight-format int4 --sym --group-size 128 --ratio 1.0
                  --backup-precision int8_sym`` (the recipe's settings; no tokenizer IRs are skipped)

The target is reduced to its openvino-int4 artifact through EDGESLM_DATA_DIR (as
openvino_export_decode.py's ``bundle`` export does), so the ONNX fallback is not built and the numbers
are the OpenVINO export's. Per build: wall time, peak RSS of the process tree sampled every 0.2 s and
``ru_maxrss`` (``build_full_size.measure``), the IR's weight types read back, .bin size. Then decode
tok/s of each artifact: plain ``openvino_genai.LLMPipeline`` on the CPU with the engine's properties,
greedy, same prompt ids (``openvino_export_decode.decode``, kinds ``plain`` and ``shim``, the engine's
streaming path; the optimum-cli folder is not a bundle: plain only, with the same ids, stop ids and
properties). Before each build, wait
for ``--min-free-gb`` available (other jobs on the host are not waited for: the load average is recorded).

Usage: python benchmarks/openvino_low_memory.py [--checkpoint DIR] [--work DIR] [--routes LIST]
           [--max-new-tokens N] [--repeats R] [--min-free-gb G] [--json-out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_full_size import ENSURE, failure_reason, host_info, measure, tree_size  # noqa: E402
from openvino_export_decode import PROMPT, decode  # noqa: E402

ROUTES = {"onnx-streaming": [], "optimum-intel": ["--set", "openvino-int4.exporter=optimum-intel"]}
OPTIMUM_CLI = ["export", "openvino", "--task", "text-generation-with-past", "--weight-format", "int4", "--sym",
               "--group-size", "128", "--ratio", "1.0", "--backup-precision", "int8_sym"]


def reduced_target(work: Path) -> Path:
    data = work / "data"
    (data / "targets").mkdir(parents=True, exist_ok=True)
    text = (HERE.parent / "targets" / "intel-core-ultra.toml").read_text()
    reduced = text.replace('formats = ["openvino-int4", "onnx-int4-cpu"]', 'formats = ["openvino-int4"]')
    assert reduced != text, "targets/intel-core-ultra.toml changed: update reduced_target()"
    (data / "targets" / "intel-core-ultra.toml").write_text(reduced)
    return data


def wait_for_memory(min_gb: float) -> dict:
    """Wait (30 s polls) for ``min_gb`` available. Unlike openvino_export_decode's wait, other builds on
    the host do not block (a shared host's CI runs them all the time); the load average is recorded."""
    while psutil.virtual_memory().available < min_gb * 1e9:
        print(f"  waiting: {psutil.virtual_memory().available / 1e9:.1f} GB available (need {min_gb})", flush=True)
        time.sleep(30)
    return {"mem_available_before_bytes": psutil.virtual_memory().available, "load_average_before": os.getloadavg()}


def watch_children(pid: int, seen: dict, done: threading.Event) -> None:
    """Peak RSS per process of the tree (with its command line): a short-lived forked child shows its
    parent's pages as its own RSS, so the tree sum can double-count; this tells which process it was."""
    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not done.is_set():
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            break
        for p in procs:
            try:
                rss = p.memory_info().rss
                entry = seen.setdefault(p.pid, {"cmd": " ".join(p.cmdline())[:200], "peak_rss_bytes": 0})
                entry["peak_rss_bytes"] = max(entry["peak_rss_bytes"], rss)
            except psutil.Error:
                pass
        done.wait(0.1)


def measured(cmd: list[str]) -> dict:
    """build_full_size.measure, plus the peak RSS of each process in the tree."""
    seen: dict = {}
    done = threading.Event()
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        threading.Thread(target=watch_children, args=(proc.pid, seen, done), daemon=True).start()
        return proc

    subprocess.Popen = popen
    try:
        run = measure(cmd)
    finally:
        subprocess.Popen = real_popen
        done.set()
    run["processes"] = sorted(seen.values(), key=lambda e: -e["peak_rss_bytes"])[:5]  # the largest five
    run["process_count"] = len(seen)
    return run


def one_build(route: str, ckpt: Path, work: Path, min_gb: float) -> dict:
    from edgeslm.backends.openvino.ir_inspection import weight_compression_stats

    out = work / f"{route}.bundle"
    shutil.rmtree(out, ignore_errors=True)
    if route == "optimum-cli":
        cmd = [str(Path(sys.executable).with_name("optimum-cli")), *OPTIMUM_CLI, "--model", str(ckpt), str(out)]
    else:
        cmd = [sys.executable, "-m", "edgeslm", "build", "--target", "intel-core-ultra", "--model", str(ckpt),
               "--out", str(out), "--force", "--json", "--no-eval", *ROUTES[route]]
    print(f"build {route}: {' '.join(cmd)}", flush=True)
    os.environ["EDGESLM_DATA_DIR"] = str(reduced_target(work))
    try:
        run = {"route": route, "command": cmd, **wait_for_memory(min_gb), **measured(cmd)}
    finally:
        os.environ.pop("EDGESLM_DATA_DIR", None)
    stdout, stderr = run.pop("stdout"), run.pop("stderr")
    if run["rc"]:
        run.update(failed=failure_reason(run["rc"]), stderr_tail=stderr[-3000:])
        print(f"  FAILED: {run['failed']}\n{stderr[-2000:]}", flush=True)
        return run
    folder = out if route == "optimum-cli" else out / "artifacts" / "openvino-int4"
    run["build_seconds"] = None if route == "optimum-cli" else json.loads(stdout).get("seconds")
    run["ir_weights"] = weight_compression_stats(folder / "openvino_model.xml")
    run["model_bin_bytes"] = (folder / "openvino_model.bin").stat().st_size
    run["total_bytes"], run["files"] = tree_size(folder)
    run["bundle"] = str(out)
    print(f"  {run['wall_s']:.1f} s, peak RSS {run['peak_rss_sampled_bytes'] / 1e9:.2f} GB (ru_maxrss "
          f"{run['ru_maxrss_bytes'] / 1e9:.2f}), bin {run['model_bin_bytes'] / 1e9:.3f} GB; processes "
          f"{run['process_count']}, the largest {[round(e['peak_rss_bytes'] / 1e9, 2) for e in run['processes']]} GB",
          flush=True)
    return run


def decode_folder(folder: Path, bundle: Path, n: int, repeats: int) -> dict:
    """Plain LLMPipeline decode of a folder that is not a bundle (optimum-cli's output), with the prompt
    ids, stop ids and pipeline properties the edgeslm engine uses for ``bundle``."""
    import statistics

    import openvino_genai as genai
    from openvino_export_decode import plain_run

    import edgeslm
    llm = edgeslm.load(bundle, artifact="openvino-int4")
    ids = llm.prompt_ids([{"role": "user", "content": PROMPT}])
    pipe = genai.LLMPipeline(str(folder), "CPU", **dict(llm.engine.properties))
    runs = []
    for i in range(repeats + 1):
        run = plain_run(pipe, ids, n, llm.stop_ids)
        print(f"  {'warm-up' if not i else f'repeat {i}'} plain : {run['tokens']} tokens, TTFT "
              f"{run['ttft_s'] * 1e3:8.1f} ms, {run['tok_s']:7.2f} tok/s", flush=True)
        if i:
            runs.append(run)
    med = {m: statistics.median(r[m] for r in runs) for m in ("tok_s", "ttft_s", "total_s", "tokens")}
    return {"runs": {"plain": runs}, "median": {"plain": med}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/phi35-random"))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeslm-bench-ov-lowmem")
    ap.add_argument("--routes", default="onnx-streaming,optimum-intel,optimum-cli")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--min-free-gb", type=float, default=12.0)
    ap.add_argument("--keep", action="store_true", help="keep the bundles (they are ~2.3 GB each)")
    ap.add_argument("--json-out", type=Path, default=HERE / "results" / "openvino_low_memory.json")
    args = ap.parse_args()
    if not (args.checkpoint / "config.json").is_file():
        subprocess.run([sys.executable, "-c", ENSURE, str(HERE), str(args.checkpoint)], check=True)
    args.work.mkdir(parents=True, exist_ok=True)
    routes = [r for r in args.routes.split(",") if r]
    builds = [one_build(route, args.checkpoint, args.work, args.min_free_gb) for route in routes]
    decodes = {}
    for run in builds:
        if not run["rc"] and run["route"] != "optimum-cli":
            print(f"decode {run['route']}", flush=True)
            decodes[run["route"]] = decode(Path(run["bundle"]), args.max_new_tokens, args.repeats, PROMPT,
                                           ["plain", "shim"], True)
    cli = next((r for r in builds if r["route"] == "optimum-cli" and not r["rc"]), None)
    bundle = next((r["bundle"] for r in builds if r["route"] != "optimum-cli" and not r["rc"]), None)
    if cli and bundle:
        print("decode optimum-cli (plain LLMPipeline on its folder)", flush=True)
        decodes["optimum-cli"] = decode_folder(Path(cli["bundle"]), Path(bundle), args.max_new_tokens,
                                               args.repeats)
    ok = {r["route"]: r for r in builds if not r["rc"]}
    summary = {route: {"wall_s": r["wall_s"], "peak_rss_gb": round(r["peak_rss_sampled_bytes"] / 1e9, 3),
                       "peak_rss_build_process_gb": round(r["processes"][0]["peak_rss_bytes"] / 1e9, 3)
                       if r["processes"] else None,
                       "ru_maxrss_gb": round(r["ru_maxrss_bytes"] / 1e9, 3),
                       "model_bin_gb": round(r["model_bin_bytes"] / 1e9, 3),
                       "decode_tok_s": round(decodes[route]["median"]["plain"]["tok_s"], 2) if route in decodes
                       else None,
                       "decode_tok_s_shim": round(decodes[route]["median"]["shim"]["tok_s"], 2)
                       if "shim" in decodes.get(route, {}).get("median", {}) else None} for route, r in ok.items()}
    for other in ("optimum-intel", "optimum-cli"):
        if {"onnx-streaming", other} <= ok.keys():
            new, old = summary["onnx-streaming"], summary[other]
            summary[f"ratio_onnx_over_{other}"] = {
                k: round(new[k] / old[k], 3) for k in ("wall_s", "peak_rss_build_process_gb", "ru_maxrss_gb",
                                                       "model_bin_gb", "decode_tok_s") if new[k] and old[k]}
    for run in builds:
        run["rss_series"] = run.get("rss_series", [])[::5]  # 1 s resolution is plenty for the record
    result = {"checkpoint": str(args.checkpoint), "host": host_info(), "routes": routes, "builds": builds,
              "decode": decodes, "summary": summary}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    if not args.keep:
        for run in builds:
            shutil.rmtree(run.get("bundle", ""), ignore_errors=True) if run.get("bundle") else None


if __name__ == "__main__":
    main()
