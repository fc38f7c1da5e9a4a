"""Answer accuracy of a vision model on an eval folder of images and questions, scored by key words.

The eval folder (``tests/fixtures/eval/vision-dev``) holds images and ``questions.jsonl``: one JSON
object a line with ``image`` (a file name in the folder), ``question``, ``answer`` (the reference
answer), ``key`` and ``type``. An answer is right when the words of its question type's vocabulary
(:data:`VOCABULARY`) that it contains, in order, equal the key: "A red square and a blue circle." is
``square circle`` for a ``shape`` question, "At the top left." is ``top left`` for a ``position``
question, "Red." is ``red`` for a ``colour`` question. Other words (articles, colours in a shape
answer, punctuation, case) do not count. The British spelling is the canonical one: the type
``colour`` may be written ``color`` and the colour ``grey`` ``gray``.

Standard library only (the device side scores answers too).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelSourceError, UsageError

QUESTIONS_FILE = "questions.jsonl"

VOCABULARY: dict[str, frozenset[str]] = {
    "shape": frozenset({"circle", "square", "triangle", "star", "cross", "no"}),  # "There is no shape." -> no
    "colour": frozenset({"red", "green", "blue", "yellow", "purple", "orange", "white", "black", "grey"}),
    "count": frozenset({"none", "one", "two"}),
    "position": frozenset({"top", "bottom", "left", "right", "middle"}),
}
TYPE_SPELLINGS = {"color": "colour"}
WORD_SPELLINGS = {"gray": "grey"}
_WORD = re.compile(r"[a-z]+")
_FIELDS = ("image", "question", "answer", "key", "type")


@dataclass(frozen=True)
class VisionQuestion:
    image: Path
    question: str
    answer: str  # the reference answer
    key: str  # its key words, space-separated
    type: str  # a key of VOCABULARY


@dataclass(frozen=True)
class VisionScore:
    right: int
    total: int
    by_type: dict[str, tuple[int, int]]  # type -> (right, total)
    answers: tuple[str, ...]  # the answers given, in question order

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else 0.0

    def type_accuracy(self, qtype: str) -> float:
        right, total = self.by_type.get(question_type(qtype), (0, 0))
        return right / total if total else 0.0


def question_type(qtype: str) -> str:
    """The canonical name of a question type (``color`` -> ``colour``); UsageError for an unknown one."""
    name = TYPE_SPELLINGS.get(str(qtype).strip().lower(), str(qtype).strip().lower())
    if name not in VOCABULARY:
        raise UsageError(f"unknown question type {qtype!r} (known: {', '.join(sorted(VOCABULARY))})")
    return name


def answer_words(answer: str, qtype: str) -> str:
    """The words of ``answer`` that belong to the vocabulary of ``qtype``, in order, space-separated."""
    vocabulary = VOCABULARY[question_type(qtype)]
    words = (WORD_SPELLINGS.get(w, w) for w in _WORD.findall(answer.lower()))
    return " ".join(w for w in words if w in vocabulary)


def is_right(answer: str, question: VisionQuestion) -> bool:
    return answer_words(answer, question.type) == _key_words(question.key)


def score_answers(questions: Iterable[VisionQuestion], answer_fn: Callable[[VisionQuestion], str]) -> VisionScore:
    """Ask ``answer_fn`` every question; count the right answers, overall and per type."""
    right, answers, by_type = 0, [], {}
    for question in questions:
        answer = answer_fn(question)
        if not isinstance(answer, str):
            raise TypeError(f"answer_fn returned {type(answer).__name__}, not str, for {question.question!r}")
        ok = is_right(answer, question)
        qtype = question_type(question.type)
        got, total = by_type.get(qtype, (0, 0))
        by_type[qtype] = (got + ok, total + 1)
        right += ok
        answers.append(answer)
    return VisionScore(right=right, total=len(answers), by_type=by_type, answers=tuple(answers))


def vision_prompt(question: str) -> str:
    """The chat prompt of one question about one image (Phi-3.5-vision's template)."""
    return "<|user|>\n<|image_1|>\n" + question + "<|end|>\n<|assistant|>\n"


def load_questions(folder: Path) -> list[VisionQuestion]:
    """The questions of an eval folder, each checked: its image exists, its key is of its type's vocabulary
    and its reference answer is right by its own key."""
    folder = Path(folder)
    path = folder / QUESTIONS_FILE
    if not folder.is_dir():
        raise UsageError(f"no eval folder {folder}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"no {QUESTIONS_FILE} in the eval folder {folder}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelSourceError(f"cannot read {path}: {exc}") from None
    questions = [_question(folder, f"{path}:{n}", line) for n, line in enumerate(lines, 1) if line.strip()]
    if not questions:
        raise ModelSourceError(f"{path} holds no questions")
    return questions


def _question(folder: Path, where: str, line: str) -> VisionQuestion:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ModelSourceError(f"{where}: not JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise ModelSourceError(f"{where}: not a JSON object")
    for name in _FIELDS:
        if not isinstance(row.get(name), str) or not row[name].strip():
            raise ModelSourceError(f"{where}: field {name!r} is missing or not a non-empty string")
    try:
        qtype = question_type(row["type"])
    except UsageError as exc:
        raise ModelSourceError(f"{where}: {exc.message}") from None
    image = folder / row["image"]
    if Path(row["image"]).is_absolute() or ".." in Path(row["image"]).parts:
        raise ModelSourceError(f"{where}: image {row['image']!r} must be a file name inside the eval folder")
    if not image.is_file():
        raise ModelSourceError(f"{where}: no image {row['image']!r} in {folder}")
    key = _key_words(row["key"])
    if answer_words(key, qtype) != key:
        raise ModelSourceError(f"{where}: key {row['key']!r} has words outside the {qtype} vocabulary "
                               f"({', '.join(sorted(VOCABULARY[qtype]))})")
    if answer_words(row["answer"], qtype) != key:
        raise ModelSourceError(f"{where}: the reference answer {row['answer']!r} does not match its key {row['key']!r}")
    return VisionQuestion(image=image, question=row["question"], answer=row["answer"], key=key, type=qtype)


def _key_words(key: str) -> str:
    return " ".join(WORD_SPELLINGS.get(w, w) for w in _WORD.findall(key.lower()))
