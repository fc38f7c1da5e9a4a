"""Run a Phi-3.5-vision bundle's CUDA ONNX artifact on a real NVIDIA GPU: image answers and features.

The Jetson check for vision on any NVIDIA GPU (the CUDA graphs are the same on x86_64 and Jetson);
needs onnxruntime-genai-cuda (and its onnxruntime-gpu) importable. Steps:

1. ``edgeslm.load(bundle, device="gpu")``: the selection must place ``onnx-int4-cuda`` on the GPU;
2. every question of an image-question folder (``questions.jsonl``) answered through the runtime's own
   path (content parts → device-side preprocessing → onnxruntime-genai's phi3v pipeline on CUDA),
   scored by key words, against the accuracy the build measured (on the CPU) in the manifest;
3. the vision part alone on the CUDA provider against reference features computed beforehand
   (``--reference-features``: an ``.npz`` of image name → fp32 torch reference features), cosine and
   max abs error.

Prints one JSON object. Usage: python benchmarks/cuda_vision_check.py BUNDLE --questions DIR
[--reference-features FILE.npz]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARTIFACT = "onnx-int4-cuda"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--questions", type=Path, required=True)
    ap.add_argument("--reference-features", type=Path)
    args = ap.parse_args()

    import onnxruntime as ort
    import onnxruntime_genai as og
    from PIL import Image

    import edgeslm
    from edgeslm.builder.vision_accuracy import is_right, load_questions
    from edgeslm.vision.phi3v_processor import preprocess

    report: dict = {"onnxruntime_genai": og.__version__, "onnxruntime": ort.__version__,
                    "providers": ort.get_available_providers()}
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    built = next(a for a in manifest["artifacts"] if a["format"] == ARTIFACT)
    report["build_accuracy_cpu"] = built["vision"]["accuracy"]
    questions = load_questions(args.questions)
    with edgeslm.load(args.bundle, device="gpu") as llm:
        chosen = llm.selection.chosen
        report["selected"] = {"artifact": chosen.artifact.format, "device": chosen.device, "summary": chosen.summary}
        right, answers, ttft = 0, [], []
        start = time.perf_counter()
        for q in questions:
            result = llm.chat([{"role": "user", "content": [{"type": "image", "image": str(q.image)},
                                                            {"type": "text", "text": q.question}]}],
                              max_new_tokens=16)
            ok = is_right(result.text, q)
            right += ok
            ttft.append(result.time_to_first_token_s)
            answers.append({"image": Path(q.image).name, "question": q.question, "answer": result.text,
                            "right": ok, "finish": result.finish_reason})
        report["gpu_accuracy"] = {"right": right, "total": len(questions), "accuracy": round(right / len(questions), 4),
                                  "wall_s": round(time.perf_counter() - start, 2),
                                  "median_ttft_s": round(float(np.median(ttft)), 4)}
        report["answers_sample"] = answers[:8]
        report["wrong"] = [a for a in answers if not a["right"]]
    if args.reference_features:
        artifact_dir = args.bundle / built["path"]
        session = ort.InferenceSession(str(artifact_dir / "vision.onnx"),
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        report["vision_session_providers"] = session.get_providers()
        reference = np.load(args.reference_features)
        images_dir = Path(__file__).resolve().parents[1] / "tests/fixtures/images"
        features = {}
        for name in reference.files:
            processed = preprocess([Image.open(images_dir / name).convert("RGB")], num_crops=built["vision"]["num_crops"])
            got = session.run(["image_features"], {"pixel_values": processed.pixel_values,
                                                   "image_sizes": processed.image_sizes})[0].astype(np.float32)
            expected = reference[name]
            cos = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
            features[name] = {"tokens": int(got.shape[0]), "cosine_min": round(float(cos.min()), 6),
                              "max_abs_error": round(float(np.abs(got - expected).max()), 5)}
        report["vision_features_vs_reference"] = features
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
