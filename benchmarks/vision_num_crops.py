"""What fewer crops per image cost: image-question accuracy and prompt tokens at num_crops 1, 2, 4, 8.

Loads one vision bundle with ``edgeslm.load(bundle, num_crops=N)`` (the runtime's override of the
artifact's crops per image) and answers every question of ``tests/fixtures/eval/vision-dev`` through the
runtime path (content parts -> device-side preprocessing -> the artifact), greedy, 16 new tokens.
Note: the trained fixture saw crop grids 1x2 .. 4x1 (at most 4 crops) in training, so 1 crop (a 1x1
grid) and 8 crops are out of its distribution; the real Phi-3.5-vision was trained with up to 16.

Usage: python benchmarks/vision_num_crops.py BUNDLE OUT.json
"""
import json
import sys
import time
from pathlib import Path

import edgeslm
from edgeslm.builder.vision_accuracy import is_right, load_questions

qs = load_questions(Path("tests/fixtures/eval/vision-dev"))
out = {}
for n in (1, 2, 4, 8):
    with edgeslm.load(sys.argv[1], num_crops=n) as llm:
        right, toks, t0 = 0, [], time.perf_counter()
        for q in qs:
            msgs = [{"role": "user", "content": [{"type": "image", "image": str(q.image)}, {"type": "text", "text": q.question}]}]
            r = llm.chat(msgs, max_new_tokens=16)
            right += is_right(r.text, q); toks.append(r.usage.prompt_tokens)
        out[n] = {"accuracy": round(right / len(qs), 4), "mean_prompt_tokens": round(sum(toks) / len(toks), 1), "wall_s": round(time.perf_counter() - t0, 1)}
        print(n, out[n], flush=True)
json.dump(out, open(sys.argv[2], "w"), indent=1)
