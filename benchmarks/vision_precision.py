"""Which precision the vision part can take: CLIP's linear layers int8 / int4 / float32 on the trained fixture.

Builds ``examples/models/phi35v-shapes-tiny`` once per ``vision_precision`` (everything else the recipe's
CPU default) with the quality measurement on, and reads from each manifest: the image-question accuracy
of the artifact and of the fp32 torch reference on ``edgeslm:vision-dev`` (118 questions), the vision
features' min cosine / max abs error against the reference, and the vision part's size. The text side
of this fixture is not a language model, so the builds pass ``--allow-quality-loss`` for its perplexity;
the image accuracy is what this compares. Results: ``benchmarks/results/vision_precision.json``.

Usage: python benchmarks/vision_precision.py [--out-dir /tmp/vision-precision]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "examples/models/phi35v-shapes-tiny"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", type=Path, default=Path("/tmp/vision-precision"))
    ap.add_argument("--precisions", nargs="+", default=["int8", "int4", "float32"])
    args = ap.parse_args()
    rows = []
    for precision in args.precisions:
        out = args.out_dir / f"{precision}.bundle"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgeslm", "build", "--target", "cpu-x86_64", "--model", str(MODEL),
                        "--out", str(out), "--force", "--set", f"onnx-int4-cpu.vision_precision={precision}",
                        "--eval-text", str(REPO / "examples/eval/docs-heldout.txt"), "--allow-quality-loss"],
                       check=True, capture_output=True, text=True)
        artifact = json.loads((out / "manifest.json").read_text())["artifacts"][0]
        vision = artifact["vision"]
        rows.append({"vision_precision": precision, "build_s": round(time.perf_counter() - started, 1),
                     "vision_weight_bytes": vision["vision_weight_bytes"], **vision["accuracy"]})
        print(json.dumps(rows[-1]), flush=True)
    path = REPO / "benchmarks/results/vision_precision.json"
    measured = {r["vision_precision"] for r in rows}
    kept = json.loads(path.read_text())["rows"] if path.is_file() else []  # earlier runs of other precisions
    rows = [r for r in kept if r["vision_precision"] not in measured] + rows
    path.write_text(json.dumps({"model": MODEL.name, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
