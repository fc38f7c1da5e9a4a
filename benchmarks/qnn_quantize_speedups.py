"""One QNN part's QDQ step, onnxruntime's own way against edgeslm's (``quantizer_speedups`` + opset 21 export).

Setup (once, kept in ``--work``): the first decoder layer of a full-width checkpoint as its static prefill
graph (chunk 128, context 4096), exported twice: at opset 17 (what onnxruntime's quantizer then converts
to 21 itself, the old route) and at opset 20 declared 21 (``static_decoder.declare_opset_21``, the new
route), plus a few calibration feeds (random activations of the graph's input shapes: ranges do not
change the work).

A run (``--route old|new``) is one process: quantize that graph to w4a16 with onnxruntime's QNN config
(``qdq_quantization.quantize_graph``), with onnxruntime's pure-Python int4 packing and per-channel loop
(old) or edgeslm's vectorized stand-ins (new), and print the seconds. Time the two with farm-bench:

  farm-bench -n 3 --timeout 1800 -- .venv/bin/python benchmarks/qnn_quantize_speedups.py --route new \\
      --vs '.venv/bin/python benchmarks/qnn_quantize_speedups.py --route old'

``--check`` also compares the two QDQ graphs' weight initializers (byte-identical values expected).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class Feeds:
    """A CalibrationDataReader over random feeds of the graph's inputs."""

    def __init__(self, model: Path, count: int):
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
        rng = np.random.default_rng(0)
        shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
        self.feeds = [{name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
                      for _ in range(count)]

        self.cursor, self.limit = 0, len(self.feeds)

    def __len__(self) -> int:
        return len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.cursor, self.limit = start_index, min(end_index, len(self.feeds))

    def get_next(self):
        if self.cursor >= self.limit:
            return None
        self.cursor += 1
        return self.feeds[self.cursor - 1]


def setup(checkpoint: Path, work: Path) -> None:
    from edgeslm.backends.qnn.part_plan import plan_parts
    from edgeslm.backends.qnn.part_weights import part_tensors
    from edgeslm.backends.qnn.static_decoder import build_module, export_graph

    if (work / "new.onnx").is_file():
        return
    work.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((checkpoint / "config.json").read_text())
    part = plan_parts(cfg, 1)[0]
    module = build_module(part_tensors(checkpoint, part, cfg), cfg, part.layers, part.last)
    export_graph(module, cfg, 128, 4096, work / "new.onnx", part.layers, part.first, part.last)

    import torch

    from edgeslm.backends.qnn import static_decoder

    real_export = torch.onnx.export

    def at_opset_17(*args, **kwargs):
        return real_export(*args, **{**kwargs, "opset_version": 17})

    torch.onnx.export, keep = at_opset_17, static_decoder.declare_opset_21
    static_decoder.declare_opset_21 = lambda path: None
    try:
        export_graph(module, cfg, 128, 4096, work / "old.onnx", part.layers, part.first, part.last)
    finally:
        torch.onnx.export, static_decoder.declare_opset_21 = real_export, keep


def run(work: Path, route: str, feeds: int) -> float:
    from edgeslm.backends.qnn import qdq_quantization

    if route == "old":
        qdq_quantization.fast_weight_quantization = contextlib.nullcontext  # onnxruntime's own loops
    started = time.perf_counter()
    qdq_quantization.quantize_graph(work / f"{route}.onnx", work / f"{route}.qdq.onnx",
                                    Feeds(work / f"{route}.onnx", feeds), 4, 8)
    return time.perf_counter() - started


def check(work: Path) -> dict:
    import onnx
    from onnx import numpy_helper

    def weights(route: str) -> list[bytes]:
        model = onnx.load(str(work / f"{route}.qdq.onnx"))
        return sorted(numpy_helper.to_array(t).tobytes() for t in model.graph.initializer
                      if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.INT8))

    old, new = weights("old"), weights("new")
    return {"quantized_weights": len(new), "identical": old == new}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/qnn-bench/full-width-2"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/qnn-quantize-speedups"))
    ap.add_argument("--route", choices=("old", "new"), default="new")
    ap.add_argument("--feeds", type=int, default=2)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    setup(args.checkpoint, args.work)
    if args.check:
        print(json.dumps(check(args.work)))
        return
    print(json.dumps({"route": args.route, "quantize_s": round(run(args.work, args.route, args.feeds), 1)}))


if __name__ == "__main__":
    main()
