"""Where one QNN decoder part's build time and memory go, stage by stage, in one process (issue #16).

Runs the qnn-context exporter's stages for the first part of a checkpoint by hand, with the RSS of this
process sampled every 50 ms: embedding table, torch module from the part's memory-mapped tensors, float
ONNX export (prefill + decode), then per graph a CPU session, streamed calibration + QDQ (onnxruntime's
quantizer pulling feeds from ``PartReader``), and the offline HTP compile (SC8380XP). Prints one line per
stage (seconds, peak RSS during it, RSS after) and writes the same as JSON.

Usage: .venv/bin/python benchmarks/qnn_part_stages.py CHECKPOINT [--part-layers 2] [--context 4096]
           [--chunk 128] [--sequences 2] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from edgeslm.backends.qnn import ep_sessions
from edgeslm.backends.qnn.part_plan import plan_parts
from edgeslm.backends.qnn.part_weights import embedding_table, part_tensors
from edgeslm.backends.qnn.qdq_quantization import quantize_graph
from edgeslm.backends.qnn.rope_tables import rope_tables
from edgeslm.backends.qnn.static_decoder import build_module, export_graph
from edgeslm.backends.qnn.streamed_calibration import PartReader, embed_steps, plan_steps, residual_store
from edgeslm.builder.text_windows import BuildText
from edgeslm.model_shape import ModelShape

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--part-layers", type=int, default=2)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--sequences", type=int, default=2)
    ap.add_argument("--json-out", type=Path, default=HERE / "results" / "qnn_part_stages.json")
    args = ap.parse_args()
    proc, peak, stages = psutil.Process(), [0], []

    def watch() -> None:
        while True:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()

    def stage(name: str, started: float) -> None:
        now = proc.memory_info().rss
        stages.append({"stage": name, "seconds": round(time.time() - started, 1), "peak_rss_bytes": peak[0],
                       "rss_after_bytes": now})
        print(f"{name}: {stages[-1]['seconds']} s, peak {peak[0] / 1e9:.2f} GB, after {now / 1e9:.2f} GB", flush=True)
        peak[0] = now

    cfg = json.loads((args.checkpoint / "config.json").read_text())
    shape = ModelShape.of(cfg)
    work = Path(tempfile.mkdtemp(prefix="qnn-stages-"))
    part = plan_parts(cfg, args.part_layers)[0]
    started = time.time()
    embeddings = embedding_table(args.checkpoint, cfg).astype(np.float16)
    stage("embedding table", started)
    started = time.time()
    module = build_module(part_tensors(args.checkpoint, part, cfg), cfg, part.layers, part.last)
    stage(f"torch module ({len(part.layers)} layers{' + head' if part.last else ''})", started)
    started = time.time()
    for graph, steps in (("prefill", args.chunk), ("decode", 1)):
        export_graph(module, cfg, steps, args.context, work / f"{graph}.onnx", part.layers, part.first, part.last)
    del module
    gc.collect()
    stage("float ONNX export (prefill + decode)", started)
    text = BuildText(HERE.parent / "examples" / "eval" / "docs-heldout.txt", "benchmark")
    ids = text.sequences(args.checkpoint / "tokenizer.json", args.sequences, 2 * args.chunk + 16)
    steps = plan_steps(ids, args.chunk)
    store = residual_store(work / "residual.npy", steps, args.chunk, shape.hidden_size)
    embed_steps(store, steps, embeddings)
    cos, sin = rope_tables(cfg, args.context)
    for graph in ("prefill", "decode"):
        started = time.time()
        session = ep_sessions.cpu_session(work / f"{graph}.onnx", 2)
        stage(f"{graph}: float session", started)
        (work / "kv").mkdir(exist_ok=True)
        reader = PartReader(session, part, steps, graph, store, None, cos, sin, args.context, shape.kv_heads,
                            shape.head_dim, work / "kv")
        started = time.time()
        quantize_graph(work / f"{graph}.onnx", work / f"{graph}.qdq.onnx", reader, 4, 8)
        stage(f"{graph}: streamed calibration + QDQ ({len(reader)} feeds)", started)
        reader.finish()
        del reader, session
        gc.collect()
    for graph in ("prefill", "decode"):
        started = time.time()
        ep_sessions.compile_context(work / f"{graph}.qdq.onnx", work / f"{graph}_ctx.onnx", 60, 73)
        stage(f"{graph}: HTP compile (SC8380XP)", started)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "layers": [part.start, part.stop],
                                         "context": args.context, "chunk": args.chunk, "sequences": args.sequences,
                                         "stages": stages}, indent=1))


if __name__ == "__main__":
    main()
