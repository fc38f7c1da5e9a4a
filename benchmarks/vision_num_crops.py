"""What fewer crops per image cost: image-question accuracy and prompt tokens at num_crops 1, 2, 4, 8.

Loads one vision bundle with ``edgeslm.load(bundle, num_crops=N)`` (the runtime's override of the
artifact's crops per image) and answers every question of ``tests/fixtures/eval/vision-dev`` through the
runtime path (content parts -> device-side preprocessing -> the artifact), greedy, 16 new tokens.
Note: the trained fixture saw crop grids 1x2 .. 4x1 (at most 4 crops) in training, so 1 crop (a 1x1
grid) and 8 crops are out of its distribution; the real Phi-3.5-vision was trained with up to 16.

Usage: python benchmarks/vision_num_crops.py BUNDLE OUT.json
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import edgeslm
from edgeslm.builder.vision_accuracy import is_right, load_questions

QUESTIONS = Path(__file__).resolve().parents[1] / "tests/fixtures/eval/vision-dev"


def main(bundle: str, out_path: str) -> None:
    questions = load_questions(QUESTIONS)
    out = {}
    for crops in (1, 2, 4, 8):
        with edgeslm.load(bundle, num_crops=crops) as llm:
            right, tokens, started = 0, [], time.perf_counter()
            for q in questions:
                content = [{"type": "image", "image": str(q.image)}, {"type": "text", "text": q.question}]
                result = llm.chat([{"role": "user", "content": content}], max_new_tokens=16)
                right += is_right(result.text, q)
                tokens.append(result.usage.prompt_tokens)
            out[crops] = {"accuracy": round(right / len(questions), 4),
                          "mean_prompt_tokens": round(sum(tokens) / len(tokens), 1),
                          "wall_s": round(time.perf_counter() - started, 1)}
            print(crops, out[crops], flush=True)
    Path(out_path).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
