"""Phi-3.5-vision on the Snapdragon NPU (``qnn-context`` with images): image TTFT split on the demo model.

``ttft``: on a bundle of the demo-scale fixture (``examples/models/phi35v-shapes-tiny``, built for
snapdragon-x-elite with ``--no-eval`` and context 1024 / chunk 64 unless ``--bundle``), through
``edgeslm.load(..., artifact="qnn-context")``, per image: **preprocessing** (``prepare``'s ``preprocess_s``),
**vision** (the engine's encoder call on the HTP + host HD layout), **prefill** (the prompt's embeddings
through every part's prefill graph in chunks, the first token's logits) and the engine's own TTFT
(``GenerationResult.time_to_first_token_s``). No Snapdragon here: the HTP backend is onnxruntime-qnn's
simulator on x86_64, which is what these seconds are (a device's NPU is far faster); the same split on
ONNX Runtime's CPU provider over the artifact's QDQ graphs is given beside it. Medians over ``--repeats``.

The full-size build (peak RSS, wall, sizes) is ``benchmarks/qnn_build.py --full /tmp/phi35v-random --no-eval``.

Usage: python benchmarks/qnn_vision.py ttft [--bundle DIR] [--repeats N] [--json-out FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
FIXTURE = REPO / "examples/models/phi35v-shapes-tiny"
IMAGES = REPO / "tests/fixtures/images"
QUESTION = "How many shapes are there?"


def _demo_bundle() -> Path:
    out = Path(tempfile.mkdtemp(prefix="qnn-vision-")) / "shapes.bundle"
    subprocess.run([sys.executable, "-m", "edgeslm", "build", "--target", "snapdragon-x-elite", "--model", str(FIXTURE),
                    "--out", str(out), "--no-eval", "--set", "qnn-context.context_length=1024",
                    "--set", "qnn-context.prefill_chunk=64"], check=True, capture_output=True)
    return out


def _split(llm, loop_of, vision_of, name: str) -> dict[str, float]:
    from edgeslm.backends.qnn.vision_layout import prompt_rows
    from edgeslm.runtime.message_parts import user_message

    prepared = llm.prepare([user_message(QUESTION, [str(IMAGES / name)])])
    start = time.perf_counter()
    features = vision_of(prepared.images)
    vision = time.perf_counter() - start
    loop = loop_of()
    start = time.perf_counter()
    rows = prompt_rows(loop.embeddings, prepared.ids, features)
    loop.reset()
    loop.prefill(prepared.ids, rows)
    prefill = time.perf_counter() - start
    return {"preprocess_s": prepared.preprocess_s, "vision_s": vision, "prefill_s": prefill,
            "prompt_tokens": len(prepared.ids), "image_tokens": prepared.image_tokens}


def run_ttft(args) -> dict:
    import edgeslm
    from edgeslm.backends.qnn import ep_sessions
    from edgeslm.runtime.message_parts import user_message

    bundle = Path(args.bundle) if args.bundle else _demo_bundle()
    rows = []
    with edgeslm.load(bundle, artifact="qnn-context") as llm:
        engine = llm.engine
        artifact = engine.artifact

        def cpu(path, npu_input=False):
            return ep_sessions.runner(ep_sessions.cpu_session(path, 2))

        cpu_loop, cpu_vision = artifact.loop(cpu, "qdq"), cpu(artifact.vision_file("qdq"))
        routes = {"htp_simulator": (lambda: engine.loop, engine.image_features),
                  "cpu_qdq": (lambda: cpu_loop, lambda images: artifact.image_features(
                      cpu_vision, images.pixel_values, images.image_sizes))}
        for name in ("shapes-336.png", "gradient-1280x720.jpg", "tall-64x900.png"):
            row: dict = {"image": name}
            for route, (loop_of, vision_of) in routes.items():
                samples = [_split(llm, loop_of, vision_of, name) for _ in range(args.repeats)]
                row[route] = {k: round(statistics.median(s[k] for s in samples), 4)
                              for k in ("preprocess_s", "vision_s", "prefill_s")}
                row["prompt_tokens"], row["image_tokens"] = samples[0]["prompt_tokens"], samples[0]["image_tokens"]
            result = llm.chat([user_message(QUESTION, [str(IMAGES / name)])], max_new_tokens=1)
            row["htp_simulator"]["engine_ttft_s"] = round(result.time_to_first_token_s, 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"ttft_demo": {"bundle": str(bundle), "repeats": args.repeats, "rows": rows,
                          "soc": engine.soc, "note": "HTP = onnxruntime-qnn's simulator on x86_64, not a device"}}


def main() -> None:
    from build_full_size import host_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("ttft",))
    parser.add_argument("--bundle")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json-out", default=str(HERE / "results" / "qnn_vision.json"))
    args = parser.parse_args()
    result = run_ttft(args)
    out = Path(args.json_out)
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged.update(result, host=host_info())
    out.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
