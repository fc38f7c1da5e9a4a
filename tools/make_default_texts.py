"""Write edgeslm's built-in evaluation and calibration texts from the WikiText-2 raw test split.

    python tools/make_default_texts.py PATH/TO/wikitext-2-test.raw

WikiText-2 (Merity et al., 2016; CC BY-SA 3.0/4.0, from Wikipedia's Good and Featured articles) is
split by article, so no sentence is in both files:

- ``edgeslm/default_texts/evaluation.txt``: the first articles as plain text (about 16K Phi-3 tokens,
  enough for 24 windows of 512); the build measures perplexity and KL here.
- ``edgeslm/default_texts/calibration.txt``: the following articles as Phi-3 chat turns (a user asks about
  a section, the assistant answers with its paragraphs), about 300 KB; data-aware quantization (QNN
  activation ranges, AWQ, scale estimation) calibrates here.

WikiText's tokenization artefacts (`` @-@ ``, spaces before punctuation) are undone so that the
text reads as normal prose. The output is deterministic.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "edgeslm" / "default_texts"
EVAL_CHARS = 70_000
CALIBRATION_CHARS = 300_000
QUESTIONS = ("Tell me about {section} of {title}.", "What do you know about {title}? Focus on {section}.",
             "Write a short encyclopedia section on {section} ({title}).", "Explain {section} for {title}.")
INTRO_QUESTIONS = ("Tell me about {title}.", "Who or what is {title}?", "Give me an overview of {title}.")


def detokenize(line: str) -> str:
    line = line.strip()
    line = re.sub(r" @(.)@ ", r"\1", line)
    line = re.sub(r" ([.,;:!?)\]}%])", r"\1", line)
    line = re.sub(r"([(\[{$]) ", r"\1", line)
    line = re.sub(r" (n?'[a-z]+)\b", r"\1", line)
    line = re.sub(r'" ([^"]*?) "', r'"\1"', line)
    return line


def articles(raw: str) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """[(title, [(section, [paragraph, ...]), ...]), ...]"""
    result: list = []
    for line in raw.splitlines():
        heading = re.fullmatch(r" ((?:= )+)(.*?)((?: =)+) ", line)  # " = Title = ", " = = Section = = "
        if heading and heading.group(1) == "= ":
            result.append((detokenize(heading.group(2).strip()), [("its introduction", [])]))
        elif heading and result:
            result[-1][1].append((detokenize(heading.group(2).strip()), []))
        elif line.strip() and result:
            result[-1][1][-1][1].append(detokenize(line))
    return result


def plain(article) -> str:
    title, sections = article
    parts = [f"= {title} ="]
    for name, paragraphs in sections:
        if paragraphs and name != "its introduction":
            parts.append(f"== {name} ==")
        parts += paragraphs
    return "\n\n".join(parts) + "\n\n"


def chat(article, counter: list[int]) -> str:
    title, sections = article
    turns = []
    for name, paragraphs in sections:
        if not paragraphs:
            continue
        templates = INTRO_QUESTIONS if name == "its introduction" else QUESTIONS
        question = templates[counter[0] % len(templates)].format(section=name, title=title)
        counter[0] += 1
        answer = "\n\n".join(paragraphs)
        turns.append(f"<|user|>\n{question}<|end|>\n<|assistant|>\n{answer}<|end|>\n")
    return "".join(turns)


def main(raw_path: str) -> None:
    items = articles(Path(raw_path).read_text(encoding="utf-8"))
    evaluation, calibration, counter = "", "", [0]
    index = 0
    while len(evaluation) < EVAL_CHARS:
        evaluation += plain(items[index])
        index += 1
    while len(calibration) < CALIBRATION_CHARS and index < len(items):
        calibration += chat(items[index], counter)
        index += 1
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "evaluation.txt").write_text(evaluation, encoding="utf-8")
    (OUT / "calibration.txt").write_text(calibration, encoding="utf-8")
    print(f"evaluation.txt: {len(evaluation)} chars; calibration.txt: {len(calibration)} chars; "
          f"articles used: {index} of {len(items)}")


if __name__ == "__main__":
    main(sys.argv[1])
