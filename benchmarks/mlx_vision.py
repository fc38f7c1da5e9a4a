"""Phi-3.5-vision on MLX (the ``mlx`` artifact with images): build cost, image TTFT split, pixels vs mlx-vlm.

Three measurements, one subcommand each (results in one JSON file, ``--json-out``, merged by key):

``build``  the MLX exporter alone on the full-size random Phi-3.5-vision checkpoint
           (``benchmarks/make_random_checkpoint.py``; 4.15 B parameters, bf16), as the build pipeline
           calls it (``EXPORTER.export(ExportJob(load_source(CKPT), ...))`` with the vision recipe's
           ``mlx`` settings: 4-bit group 64 RTN text, float16 vision), in a child process measured like
           ``build_full_size.py`` (wall, peak RSS of the process tree sampled every 0.2 s, ``ru_maxrss``);
           ``load_source`` (sha256 of 8.3 GB) is timed apart. Artifact size by part: the quantized text
           model (``model*.safetensors``), the vision part (``vision.safetensors``), the rest.
``ttft``   on a bundle of the demo-scale fixture (``examples/models/phi35v-shapes-tiny``, built for
           apple-silicon with ``--no-eval`` unless ``--bundle``), through ``edgeslm.load(..., artifact="mlx")``:
           **preprocessing** (``prepare``'s ``preprocess_s``: open + edgeslm.vision preprocess),
           **vision** (the engine's ``VisionTower.image_features``, evaluated), **prefill** (the prompt's
           embeddings, the prompt into the KV cache in chunks of 512 as ``generate_step`` does, the first
           token's logits), and the
           engine's own TTFT (``GenerationResult.time_to_first_token_s``; vision + prefill inside).
           Medians over ``--repeats`` after a warm-up. Linux ``mlx[cpu]``: the CPU path (float32 compute).
``pixels`` our processor (``edgeslm.vision.phi3v_processor``) against mlx-vlm's Phi3VImageProcessor on
           the fixture images and the vision-dev set, ``num_crops`` 4: image token counts, HD sizes and
           the max / mean absolute pixel difference (where the shapes agree). Needs mlx-vlm, so run it
           with a separate interpreter that has it, e.g. ``/tmp/mlxvlm-venv/bin/python`` (mlx-vlm 0.7
           pins transformers >= 5.14; edgeslm's build stack stays below 5.6). ``--dump FILE`` also saves
           mlx-vlm's pixel values of the vision-dev images (``.npz``) for ``swap``.
``swap``   what mlx-vlm's pixels would cost: the vision-dev questions answered by the demo bundle's MLX
           artifact (the build's scorer, ``backends/mlx/scoring.answer_tokens``) with edgeslm's pixels and
           with the dumped mlx-vlm pixels (same token ids: the counts agree), accuracy of each.

Usage: python benchmarks/mlx_vision.py build [--checkpoint /tmp/phi35v-random] [--work DIR]
       python benchmarks/mlx_vision.py ttft [--bundle DIR] [--repeats N]
       /tmp/mlxvlm-venv/bin/python benchmarks/mlx_vision.py pixels [--dump /tmp/mlx_vlm_pixels.npz]
       python benchmarks/mlx_vision.py swap --dump /tmp/mlx_vlm_pixels.npz [--bundle DIR]
       (all: [--json-out benchmarks/results/mlx_vision.json])
"""
from __future__ import annotations

import argparse
import json
import shutil
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
EVAL = REPO / "tests/fixtures/eval/vision-dev"
QUESTION = "How many shapes are there?"


# ---- build ---------------------------------------------------------------------------------------------
def child_export(ckpt: str, out: Path) -> dict:
    from edgeslm.backends.mlx.exporter import EXPORTER
    from edgeslm.builder.exporter import ExportJob
    from edgeslm.builder.source import load_source
    from edgeslm.builder.text_windows import calibration_text
    from edgeslm.config.recipes import all_recipes
    from edgeslm.progress import NullProgress
    from edgeslm.registry import formats

    t0 = time.perf_counter()
    source = load_source(ckpt)
    t1 = time.perf_counter()
    work = out.with_name(out.name + ".work")
    shutil.rmtree(out, ignore_errors=True), shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True), work.mkdir()
    settings = all_recipes()["phi-3.5-vision-instruct"].formats["mlx"]
    EXPORTER.check_settings(settings, source)
    result = EXPORTER.export(ExportJob(source, formats()["mlx"], settings, out, work, 4096,
                                       calibration_text(None, None, 0)), NullProgress())
    t2 = time.perf_counter()
    shutil.rmtree(work, ignore_errors=True)
    return {"load_source_s": round(t1 - t0, 1), "export_s": round(t2 - t1, 1),
            "quantized_layers": result.quantization["quantized_layers"], "vision_precision": result.vision.precision,
            "tokens_per_image_at_4": result.vision.tokens_per_image["4"],
            "vision_runtime_bytes_estimate": result.vision.vision_runtime_bytes}


def part_sizes(artifact: Path) -> dict[str, int]:
    files = {p: p.stat().st_size for p in artifact.rglob("*") if p.is_file()}
    text = sum(s for p, s in files.items() if p.name.startswith("model") and p.suffix == ".safetensors")
    vision = sum(s for p, s in files.items() if p.name == "vision.safetensors")
    return {"text": text, "vision": vision, "other": sum(files.values()) - text - vision, "total": sum(files.values())}


def run_build(args) -> dict:
    from build_full_size import failure_reason, host_info, measure

    out = Path(args.work) / "phi35v-mlx"
    cmd = [sys.executable, __file__, "_child", args.checkpoint, str(out)]
    run = measure(cmd)
    row = {k: v for k, v in run.items() if k not in ("stdout", "stderr", "rss_series")}
    if run["rc"] != 0:
        row["failure"] = failure_reason(run["rc"])
        row["stderr_tail"] = run["stderr"][-2000:]
        return {"build": row, "host": host_info()}
    row.update(json.loads(run["stdout"].strip().splitlines()[-1]))
    row["sizes"] = part_sizes(out)
    row["rss_series_every_5s"] = run["rss_series"][::25]
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return {"build": row, "host": host_info()}


# ---- ttft ----------------------------------------------------------------------------------------------
def run_ttft(args) -> dict:
    import mlx.core as mx
    import numpy as np

    import edgeslm
    from edgeslm.backends.mlx.embedded_prompt import on_embeddings, prompt_embeddings
    from edgeslm.runtime.message_parts import user_message

    bundle = Path(args.bundle) if args.bundle else _demo_bundle()
    rows = []
    with edgeslm.load(bundle, artifact="mlx") as llm:
        engine = llm.engine
        for name in ("shapes-336.png", "gradient-1280x720.jpg", "tall-64x900.png"):
            samples: dict[str, list[float]] = {"preprocess_s": [], "vision_s": [], "prefill_s": [], "engine_ttft_s": []}
            for rep in range(args.repeats + 1):
                prepared = llm.prepare([user_message(QUESTION, [str(IMAGES / name)])])
                start = time.perf_counter()
                features = engine.vision.image_features(prepared.images.pixel_values, prepared.images.image_sizes)
                mx.eval(features)
                vision = time.perf_counter() - start
                from mlx_lm.models.cache import make_prompt_cache

                model = on_embeddings(engine.model)
                start = time.perf_counter()  # as generate_step: the prompt but its last token into the KV cache
                embeds = prompt_embeddings(engine.model, prepared.ids, features)[None]  # (chunks of 512), then
                ids = mx.array(np.maximum(np.asarray(prepared.ids), 0).astype(np.int32))[None]  # the last token
                cache = make_prompt_cache(model)  # gives the logits of the first new token
                for at in range(0, ids.shape[1] - 1, 512):
                    end = min(at + 512, ids.shape[1] - 1)
                    model(ids[:, at:end], cache=cache, input_embeddings=embeds[:, at:end])
                    mx.eval([c.state for c in cache])
                first = mx.argmax(model(ids[:, -1:], cache=cache, input_embeddings=embeds[:, -1:])[0, -1])
                mx.eval(first)
                prefill = time.perf_counter() - start
                result = llm.chat([user_message(QUESTION, [str(IMAGES / name)])], max_new_tokens=1)
                if rep:  # the first round is the warm-up
                    samples["preprocess_s"].append(prepared.preprocess_s)
                    samples["vision_s"].append(vision)
                    samples["prefill_s"].append(prefill)
                    samples["engine_ttft_s"].append(result.time_to_first_token_s)
            row = {"image": name, "prompt_tokens": len(prepared.ids), "image_tokens": prepared.image_tokens,
                   **{k: round(statistics.median(v), 4) for k, v in samples.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"ttft_demo": {"bundle": str(bundle), "repeats": args.repeats, "rows": rows,
                          "mlx": _version("mlx"), "mlx_lm": _version("mlx-lm"), "metal": _metal()}}


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _metal() -> bool:
    import mlx.core as mx

    try:
        return bool(mx.metal.is_available())
    except AttributeError:
        return False


# ---- pixels --------------------------------------------------------------------------------------------
def run_pixels(args) -> dict:
    import numpy as np
    from mlx_vlm.models.phi3_v.processing_phi3_v import Phi3VImageProcessor
    from PIL import Image

    from edgeslm.vision.image_files import open_image
    from edgeslm.vision.phi3v_processor import preprocess

    theirs = Phi3VImageProcessor(num_crops=4)
    paths = sorted(p for p in IMAGES.iterdir() if p.name != "not-an-image.png") + sorted(EVAL.glob("*.png"))
    rows, dumped = [], {}
    for path in paths:
        ours = preprocess([open_image(path, label=path.name)], num_crops=4)
        with Image.open(path) as image:
            mlx_vlm = theirs.preprocess([image.convert("RGB")])
        their_pixels = np.array(mlx_vlm["pixel_values"])[0]
        if path.parent == EVAL:
            dumped[path.name] = their_pixels.astype(np.float32)
        their_size = tuple(int(v) for v in np.array(mlx_vlm["image_sizes"])[0])
        with Image.open(path) as image:
            their_tokens = theirs.calc_num_image_tokens(image)
        our_size = tuple(int(v) for v in ours.image_sizes[0])
        used = 1 + (our_size[0] // 336) * (our_size[1] // 336)
        row = {"image": path.name, "ours_hd": our_size, "mlx_vlm_hd": their_size,
               "ours_tokens": ours.num_img_tokens[0], "mlx_vlm_tokens": their_tokens}
        if their_size == our_size:
            diff = np.abs(ours.pixel_values[0, :used] - their_pixels[:used])
            row.update(max_abs=round(float(diff.max()), 4), mean_abs=round(float(diff.mean()), 4),
                       global_max_abs=round(float(diff[0].max()), 4),
                       crops_max_abs=round(float(diff[1:].max()), 4) if used > 1 else None)
        rows.append(row)
    same = [r for r in rows if "max_abs" in r]
    summary = {"images": len(rows), "same_hd_size": len(same),
               "same_token_count": sum(r["ours_tokens"] == r["mlx_vlm_tokens"] for r in rows),
               "max_abs": max((r["max_abs"] for r in same), default=None),
               "median_mean_abs": statistics.median(r["mean_abs"] for r in same) if same else None,
               "mlx_vlm": _version("mlx-vlm"), "transformers": _version("transformers")}
    print(json.dumps(summary, indent=1))
    if args.dump:
        np.savez(args.dump, **dumped)
    return {"pixels_vs_mlx_vlm": {"summary": summary, "rows": rows}}


# ---- swap ----------------------------------------------------------------------------------------------
def run_swap(args) -> dict:
    import dataclasses

    import numpy as np

    from edgeslm.backends.mlx.scoring import answer_tokens
    from edgeslm.builder.vision_accuracy import is_right
    from edgeslm.builder.vision_quality import MAX_NEW_TOKENS, STOP_IDS, _decode, _inputs, vision_eval_plan

    bundle = Path(args.bundle) if args.bundle else _demo_bundle()
    artifact = bundle / "artifacts" / "mlx"
    plan = vision_eval_plan(None, 0, 0.05, False)
    inputs = _inputs(FIXTURE, plan, 4)
    theirs = np.load(args.dump)
    swapped, cache = [], {}
    for images, name in zip(inputs.images, inputs.image_of):
        if name not in cache:
            pixels = np.zeros_like(images.pixel_values)
            got = theirs[Path(name).name]
            pixels[0, :got.shape[0]] = got
            cache[name] = dataclasses.replace(images, pixel_values=pixels)
        swapped.append(cache[name])
    result = {}
    for label, images in (("edgeslm", inputs.images), ("mlx_vlm", swapped)):
        start = time.perf_counter()
        tokens = answer_tokens(artifact, list(zip(inputs.ids, images)), MAX_NEW_TOKENS, STOP_IDS)
        right = [is_right(_decode(FIXTURE, t), q) for t, q in zip(tokens, plan.questions)]
        result[label] = {"accuracy": round(sum(right) / len(right), 4), "seconds": round(time.perf_counter() - start, 1)}
        print(label, result[label], flush=True)
    return {"swap_pixels": {"questions": len(plan.questions), **result}}


def _demo_bundle() -> Path:
    bundle = Path(tempfile.mkdtemp()) / "shapes.bundle"
    subprocess.run([sys.executable, "-m", "edgeslm", "build", "--target", "apple-silicon", "--model", str(FIXTURE),
                    "--out", str(bundle), "--no-eval"], check=True, capture_output=True)
    return bundle


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print(json.dumps(child_export(sys.argv[2], Path(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("build", "ttft", "pixels", "swap"))
    parser.add_argument("--dump", help="pixels: save mlx-vlm's vision-dev pixels here; swap: read them")
    parser.add_argument("--checkpoint", default="/tmp/phi35v-random")
    parser.add_argument("--work", default=tempfile.gettempdir())
    parser.add_argument("--keep", action="store_true", help="keep the full-size artifact")
    parser.add_argument("--bundle")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json-out", default=str(HERE / "results" / "mlx_vision.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    result = {"build": run_build, "ttft": run_ttft, "pixels": run_pixels, "swap": run_swap}[args.what](args)
    out = Path(args.json_out)
    merged = json.loads(out.read_text()) if out.is_file() else {}
    merged.update(result)
    out.write_text(json.dumps(merged, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
