"""Phi-3.5-vision on OpenVINO: full-size build (wall, peak RSS, part sizes) and image TTFT split on the demo model.

``build``: ``edgeslm build --target ov-vision --model /tmp/phi35v-random --no-eval`` where ``ov-vision`` is
a one-format target (``openvino-int4`` only, in a temporary ``EDGESLM_DATA_DIR``; ``intel-core-ultra``
would build the ONNX artifact too), measured like ``build_full_size.py`` (RSS of the process tree sampled
every 0.2 s, ``ru_maxrss``, wall and CPU time). ``--no-eval``: random weights have no quality to measure,
and the fp32 reference of 4.2 B parameters on 118 image questions would take hours on 2 cores.

``ttft``: the demo model (``examples/models/phi35v-shapes-tiny``) built for the same target, then per
image (``tests/fixtures/images``) the time to first token of ``edgeslm.load(...).stream`` split into
edgeslm's preprocessing (opening + HD transform + token count: ``PreparedPrompt.preprocess_s``),
VLMPipeline's vision encoding (its in-graph preprocessing, CLIP, HD merge, projection:
``perf_metrics.get_vision_encoding_duration``), its whole embedding preparation (vision + token
embeddings: ``get_prepare_embeddings_duration``) and the rest of the TTFT (prefill + the first token).
Images with a non-square crop grid run the engine's Core path (no VLMPipeline metrics):
there the split is measured directly (vision features; prefill = TTFT - features).

``layout``: the questions of ``edgeslm:vision-dev`` whose image has a non-square crop grid, answered by the
engine (Core path) and by VLMPipeline forced on them (openvino-genai's height/width swap, docs/openvino.md).

Usage: python benchmarks/openvino_vision.py build|ttft|layout [--checkpoint DIR] [--json-out FILE] [--repeats N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from build_full_size import failure_reason, measure  # noqa: E402

ARTIFACT = "openvino-int4"
TARGET = """name = "ov-vision"
description = "benchmark: the OpenVINO artifact only"
os = ["linux"]
cpu_arch = "x86_64"
ram_gb = [16]
formats = ["openvino-int4"]
[planning]
memory_bandwidth_gbps = 120.0
default_context_length = 4096
reserve_ram_gb = 2.0
"""
PARTS = {"language_model": "openvino_language_model", "text_embeddings": "openvino_text_embeddings_model",
         "vision_embeddings": "openvino_vision_embeddings_model", "vision_projection": "openvino_vision_projection_model",
         "tokenizer": "openvino_tokenizer", "detokenizer": "openvino_detokenizer"}


def data_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="edgeslm-ov-vision-"))
    (folder / "targets").mkdir()
    (folder / "targets" / "ov-vision.toml").write_text(TARGET)
    return folder


def part_sizes(artifact: Path) -> dict[str, int]:
    files = {p: p.stat().st_size for p in artifact.rglob("*") if p.is_file()}
    sizes = {part: sum(s for p, s in files.items() if p.stem == stem) for part, stem in PARTS.items()}
    sizes["other"] = sum(files.values()) - sum(sizes.values())
    sizes["total"] = sum(files.values())
    return sizes


def build(ckpt: Path, out: Path, extra: tuple[str, ...] = ("--no-eval",)) -> dict:
    env = {**os.environ, "EDGESLM_DATA_DIR": str(data_dir())}
    cmd = [sys.executable, "-m", "edgeslm", "build", "--target", "ov-vision", "--model", str(ckpt), "--out", str(out),
           "--force", "--json", *extra]
    os.environ["EDGESLM_DATA_DIR"] = env["EDGESLM_DATA_DIR"]  # measure() passes the environment on
    run = measure(cmd)
    run["command"] = " ".join(cmd[1:])
    if run["rc"] != 0:
        run["failed"] = failure_reason(run["rc"])
        run["stderr_tail"] = run.pop("stderr")[-4000:]
        run.pop("stdout", None)
        return run
    run.pop("stdout", None)
    run["stderr_tail"] = run.pop("stderr")[-800:]
    run.pop("rss_series", None)
    run["part_bytes"] = part_sizes(out / "artifacts" / ARTIFACT)
    verify = subprocess.run([sys.executable, "-m", "edgeslm", "verify", str(out)], capture_output=True, text=True)
    run["verify_passed"] = verify.returncode == 0
    return run


def ttft(bundle: Path, repeats: int) -> dict:
    import edgeslm
    from edgeslm.backends.openvino.vision_features import square_grids
    from edgeslm.runtime.message_parts import user_message

    images = ["shapes-336.png", "gradient-1280x720.jpg", "tall-64x900.png"]
    results = {}
    with edgeslm.load(bundle, artifact=ARTIFACT, threads=2) as llm:
        engine = llm.engine
        llm.chat([user_message("How many shapes are there?", [str(REPO / "tests/fixtures/images" / images[0])])])
        for name in images:
            rows = []
            for _ in range(repeats):
                messages = [user_message("How many shapes are there?", [str(REPO / "tests/fixtures/images" / name)])]
                prepared = llm.prepare(messages)
                square = square_grids(prepared.images.image_sizes)
                vision_s = None
                if not square:
                    core = engine._core_path()
                    start = time.perf_counter()
                    core.features(prepared.images.pixel_values, prepared.images.image_sizes)
                    vision_s = time.perf_counter() - start
                engine.last_metrics = None
                stream = llm.stream(messages, prepared=prepared, max_new_tokens=8)
                text = "".join(stream)
                first = stream.result.time_to_first_token_s
                embeddings_s = vision_s
                if square:  # VLMPipeline's own split (ms): vision = its in-graph preprocessing + CLIP + merge +
                    metrics = engine.last_metrics  # projection; embeddings = vision + token embeddings + merge
                    vision_s = metrics.get_vision_encoding_duration().mean / 1000
                    embeddings_s = metrics.get_prepare_embeddings_duration().mean / 1000
                rows.append({"preprocess_s": prepared.preprocess_s, "vision_s": vision_s, "embeddings_s": embeddings_s,
                             "prefill_s": first - embeddings_s, "ttft_engine_s": first,
                             "ttft_total_s": first + prepared.preprocess_s, "prompt_tokens": len(prepared.ids),
                             "path": "VLMPipeline" if square else "Core", "text": text})
            results[name] = {k: (statistics.median(r[k] for r in rows) if isinstance(rows[0][k], float) else rows[0][k])
                             for k in rows[0]}
    return results


def layout(bundle: Path) -> dict:
    """The vision-dev questions whose image has a non-square crop grid, answered by the engine (Core path) and
    by VLMPipeline directly (its transposed layout): how much the upstream height/width swap costs."""
    import numpy as np
    import openvino as ov
    import openvino_genai as genai
    from PIL import Image
    from tokenizers import Tokenizer

    from edgeslm.backends.openvino.vision_features import square_grids
    from edgeslm.backends.openvino.vision_scoring import answer_tokens
    from edgeslm.builder.vision_accuracy import is_right, vision_prompt
    from edgeslm.builder.vision_quality import MAX_NEW_TOKENS, STOP_IDS, _inputs, vision_eval_plan

    artifact = bundle / "artifacts" / ARTIFACT
    source = REPO / "examples/models/phi35v-shapes-tiny"
    plan = vision_eval_plan(None, 0, 0.05, False)
    inputs = _inputs(source, plan, 4)
    picked = [i for i, images in enumerate(inputs.images) if not square_grids(images.image_sizes)]
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    texts = [vision_prompt(plan.questions[i].question) for i in picked]
    engine = answer_tokens(artifact, [(inputs.ids[i], inputs.images[i]) for i in picked], MAX_NEW_TOKENS, STOP_IDS,
                           texts=texts)
    pipeline = genai.VLMPipeline(str(artifact), "CPU")
    config = genai.GenerationConfig()
    config.max_new_tokens, config.do_sample, config.apply_chat_template = MAX_NEW_TOKENS, False, False
    config.stop_token_ids = set(STOP_IDS)
    forced, token_gaps = [], []
    for i, text in zip(picked, texts):
        pixels = np.asarray(Image.open(inputs.image_of[i]).convert("RGB"), dtype=np.uint8)[None]
        result = pipeline.generate(text, images=[ov.Tensor(np.ascontiguousarray(pixels))], generation_config=config)
        forced.append(result.texts[0].strip())
        token_gaps.append(result.perf_metrics.get_num_input_tokens() - len(inputs.ids[i]))
    questions = [plan.questions[i] for i in picked]
    return {"questions": len(plan.questions), "non_square": len(picked),
            "grids": sorted({"x".join(str(int(v) // 336) for v in inputs.images[i].image_sizes[0]) for i in picked}),
            "engine_accuracy": sum(is_right(tokenizer.decode(a, skip_special_tokens=True).strip(), q)
                                   for a, q in zip(engine, questions)) / len(picked),
            "vlmpipeline_forced_accuracy": sum(is_right(a, q) for a, q in zip(forced, questions)) / len(picked),
            "vlmpipeline_token_gap": sorted(set(token_gaps))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("build", "ttft", "layout"))
    ap.add_argument("--checkpoint", type=Path, default=Path("/tmp/phi35v-random"))
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgeslm-bench-phi35v-ov.bundle")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    import platform

    host = {"machine": platform.machine(), "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    if args.what == "build":
        result = {"host": host, "build": build(args.checkpoint, args.out)}
    elif args.what == "layout":
        demo = Path(tempfile.gettempdir()) / "edgeslm-bench-shapes-ov.bundle"
        made = build(REPO / "examples/models/phi35v-shapes-tiny", demo) if not demo.is_dir() else {"rc": 0}
        result = {"host": host, "layout": layout(demo) if made["rc"] == 0 else made}
    else:
        demo = Path(tempfile.gettempdir()) / "edgeslm-bench-shapes-ov.bundle"
        made = build(REPO / "examples/models/phi35v-shapes-tiny", demo)
        result = {"host": host, "demo_build": {k: made.get(k) for k in ("rc", "wall_s", "part_bytes")},
                  "ttft": ttft(demo, args.repeats) if made["rc"] == 0 else None}
    result["host"]["loadavg_after"] = os.getloadavg()
    text = json.dumps(result, indent=1, default=str)
    print(text)
    out = args.json_out or HERE / "results" / f"openvino_vision_{args.what}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
