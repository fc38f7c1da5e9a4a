"""Image-question accuracy of a vision artifact against edgeslm's fp32 torch reference.

Every build of a Phi-3.5-vision artifact answers an image-question set (the built-in
``edgeslm:vision-dev``, 30 synthetic shape images and 118 questions with answer keys, or
``--vision-eval DIR``) twice: with the fp32 torch reference (``phi3v_reference``, in a spawned
child process whose memory is returned when it exits) and with the artifact. Both get the same token
ids (the source tokenizer, each chunk with BOS, as the hub processor makes them) and the same
pixel values (``edgeslm.vision``), so the difference is the artifact's. The vision part's features
are compared with the reference's too (cosine and max abs error). A drop of more than the recipe's
``max_accuracy_drop`` fails the build unless ``--allow-quality-loss``.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle.manifest import VisionAccuracy
from ..errors import BuildError, QualityError, UsageError
from .vision_accuracy import VisionQuestion, is_right, load_questions, vision_prompt

BUILTIN = Path(__file__).resolve().parent.parent / "default_vision_eval"
STOP_IDS = (32007, 32000, 32001)
MAX_NEW_TOKENS = 16


@dataclass(frozen=True)
class VisionEvalPlan:
    folder: Path
    label: str  # "edgeslm:vision-dev" or the folder's name
    questions: tuple[VisionQuestion, ...]
    max_drop: float  # fraction (0.05 = 5 points)
    allow_loss: bool


def vision_eval_plan(folder: Path | None, limit: int, max_drop: float, allow_loss: bool) -> VisionEvalPlan:
    path = Path(folder) if folder else BUILTIN
    if not path.is_dir():
        raise UsageError(f"vision evaluation folder {path} does not exist",
                         hint="pass a folder with questions.jsonl and its images")
    questions = load_questions(path)
    if limit:
        questions = questions[:limit]
    return VisionEvalPlan(path, "edgeslm:vision-dev" if folder is None else path.name, tuple(questions),
                          max_drop, allow_loss)


@dataclass(frozen=True)
class _Inputs:
    ids: list[list[int]]  # per question
    images: list[Any]  # ProcessedImages per question
    image_of: list[str]  # image file name per question


def _inputs(source_dir: Path, plan: VisionEvalPlan, num_crops: int) -> _Inputs:
    from tokenizers import Tokenizer

    from ..vision.image_files import open_image
    from ..vision.image_prompt import expand_image_prompt
    from ..vision.phi3v_processor import preprocess

    tokenizer = Tokenizer.from_file(str(source_dir / "tokenizer.json"))

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=True).ids

    cache: dict[str, Any] = {}
    ids, images, names = [], [], []
    for q in plan.questions:
        key = str(q.image)
        if key not in cache:
            cache[key] = preprocess([open_image(Path(q.image), label=Path(q.image).name)], num_crops=num_crops)
        ids.append(expand_image_prompt(vision_prompt(q.question), encode, cache[key].num_img_tokens))
        images.append(cache[key])
        names.append(key)
    return _Inputs(ids, images, names)


def _reference_job(source_dir: str, plan: VisionEvalPlan, num_crops: int) -> dict[str, Any]:
    """In the child: the fp32 torch reference's answers and per-image features."""
    from .phi3v_reference import Phi3VisionReference

    reference = Phi3VisionReference.load(Path(source_dir))
    inputs = _inputs(Path(source_dir), plan, num_crops)
    features: dict[str, np.ndarray] = {}
    answers = []
    for ids, images, name in zip(inputs.ids, inputs.images, inputs.image_of):
        if name not in features:
            features[name] = reference.image_features(images.pixel_values, images.image_sizes)
        tokens = reference.generate(ids, image_features=features[name], max_new_tokens=MAX_NEW_TOKENS,
                                    stop_ids=STOP_IDS)
        answers.append([t for t in tokens if t not in STOP_IDS])
    return {"answers": answers, "features": features}


@dataclass(frozen=True)
class VisionReference:
    num_crops: int
    answers: tuple[str, ...]
    features: dict[str, np.ndarray]

    @classmethod
    def compute(cls, source_dir: Path, plan: VisionEvalPlan, num_crops: int) -> VisionReference:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            raise BuildError("measuring a vision artifact needs the torch reference (torch, transformers)",
                             hint="pip install 'edgeslm[build-onnx-builder]', or build with [[no_eval]]") from None
        context = multiprocessing.get_context("spawn")
        try:
            with context.Pool(1) as pool:
                result = pool.apply(_reference_job, (str(source_dir), plan, num_crops))
        except Exception as exc:  # an error in the child comes back here
            raise BuildError(f"the vision reference failed: {exc}") from None
        return cls(num_crops, tuple(_decode(source_dir, a) for a in result["answers"]), result["features"])


def _decode(source_dir: Path, tokens: list[int]) -> str:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(source_dir / "tokenizer.json")).decode(tokens, skip_special_tokens=True).strip()


def score_vision(plan: VisionEvalPlan, reference: VisionReference, source_dir: Path, scorer: Any,
                 artifact_dir: Path, artifact_id: str) -> VisionAccuracy:
    inputs = _inputs(source_dir, plan, reference.num_crops)
    cosines, errors = [], []
    for name, expected in reference.features.items():
        images = inputs.images[inputs.image_of.index(name)]
        got = scorer.image_features(artifact_dir, images.pixel_values, images.image_sizes)
        norms = np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
        cosines.append(float(((got * expected).sum(axis=1) / np.maximum(norms, 1e-12)).min()))
        errors.append(float(np.abs(got - expected).max()))
    # a scorer that runs a pipeline on text and image files (OpenVINO's VLMPipeline) gets those too
    raw = {"texts": [vision_prompt(q.question) for q in plan.questions], "image_paths": inputs.image_of} \
        if getattr(scorer, "ANSWERS_FROM_TEXT", False) else {}
    tokens = scorer.answer_tokens(artifact_dir, list(zip(inputs.ids, inputs.images)), MAX_NEW_TOKENS, STOP_IDS, **raw)
    answers = [_decode(source_dir, t) for t in tokens]
    source_right = [is_right(a, q) for a, q in zip(reference.answers, plan.questions)]
    artifact_right = [is_right(a, q) for a, q in zip(answers, plan.questions)]
    by_type: dict[str, list[bool]] = {}
    for q, right in zip(plan.questions, artifact_right):
        by_type.setdefault(q.type, []).append(right)
    total = len(plan.questions)
    source, artifact = sum(source_right) / total, sum(artifact_right) / total
    within = source - artifact <= plan.max_drop + 1e-9
    result = VisionAccuracy(dataset=plan.label, questions=total, source=round(source, 4), artifact=round(artifact, 4),
                            max_drop=plan.max_drop, within_limit=within,
                            by_type={k: round(sum(v) / len(v), 4) for k, v in sorted(by_type.items())},
                            feature_cosine_min=round(min(cosines), 6), feature_max_abs_error=round(max(errors), 5))
    if not within and not plan.allow_loss:
        raise QualityError(f"{artifact_id}: image-question accuracy {artifact:.1%} is {source - artifact:.1%} below the "
                           f"fp32 reference's {source:.1%} on {plan.label} (limit {plan.max_drop:.0%})",
                           hint="use a higher vision_precision (int8 or float32) or pass [[allow_quality_loss]]")
    return result
