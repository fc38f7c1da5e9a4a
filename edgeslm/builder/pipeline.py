"""``edgeslm build``: targets + checkpoint + recipe → one verified bundle folder (and optional .tar).

Order of work, cheapest checks first so bad input fails in seconds: targets and their formats →
output folder → source checkpoint (headers, architecture) → recipe and overrides → evaluation and
calibration texts → free disk space → the source's quality reference → exports (each format once,
however many targets share it), each scored against the reference → checksums → manifest → verify →
rename into place. Everything is written in temporary folders beside the destination
(``build_folders``); a failed build removes them, keeps only the converter logs, and leaves any
previous bundle untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..backend import FormatSpec
from ..bundle.checksums import sha256_file
from ..bundle.manifest import (
    SCHEMA,
    SCHEMA_VERSION,
    Artifact,
    ContextEnvelope,
    FileEntry,
    Manifest,
    MemoryNeeds,
    Provenance,
    Runtime,
    TargetEntry,
    write_manifest,
)
from ..bundle.pack import pack_bundle
from ..bundle.signatures import sign_bundle
from ..bundle.signing_keys import SigningKey
from ..bundle.verify import verify_bundle
from ..config.recipes import Recipe, apply_overrides, recipe_for_config
from ..config.targets import Target, resolve_target
from ..errors import (
    BackendMissingError,
    BuildError,
    DiskSpaceError,
    EdgeslmError,
    ModelSourceError,
    OutputExistsError,
    UsageError,
)
from ..package_versions import version_of
from ..progress import NullProgress, Progress
from ..registry import backend_of
from ..registry import formats as registered_formats
from .build_folders import BuildFolders, remove_stale
from .exporter import ExportJob, ExportResult, get_exporter
from .measured_quality import EvaluationPlan, QualityRequest, SourceReference, score_artifact
from .model_identity import chat_info, model_info
from .source import SourceModel, locate, read_config, scan_weights
from .text_windows import BuildText, calibration_text, evaluation_text
from .vision_quality import VisionEvalPlan, VisionReference, score_vision, vision_eval_plan

DEFAULT_MODEL = "microsoft/Phi-3.5-mini-instruct"


@dataclass(frozen=True)
class BuildRequest:
    targets: tuple[str, ...]
    model: str | None = None
    out: Path | None = None
    force: bool = False
    pack: bool = False
    recipe: str | None = None
    overrides: tuple[str, ...] = ()
    quality: QualityRequest = QualityRequest()
    calibration_text: Path | None = None
    signing_key: SigningKey | None = None  # sign the manifest before the bundle is moved into place
    signer: str | None = None  # the name recorded with the signature [default: the key's name]


@dataclass(frozen=True)
class BuildResult:
    bundle: Path
    manifest: Manifest
    archive: Path | None
    seconds: float


def plan_formats(target_names: tuple[str, ...]) -> tuple[list[Target], list[FormatSpec]]:
    """Resolve the targets and the formats they need, in order, each once."""
    if not target_names:
        raise BuildError("no target given", hint="pass [[targets]], e.g. raspberrypi")
    targets: list[Target] = []
    for name in target_names:
        target = resolve_target(name)
        if target not in targets:
            targets.append(target)
    formats: list[FormatSpec] = []
    for target in targets:
        for fmt_name in target.formats:
            spec = registered_formats()[fmt_name]  # load_target_file refused unregistered formats
            if spec not in formats:
                formats.append(spec)
    return targets, formats


def build_bundle(request: BuildRequest, progress: Progress | None = None) -> BuildResult:
    progress = progress or NullProgress()
    started = time.monotonic()
    targets, formats = plan_formats(request.targets)
    exporters = {spec.name: get_exporter(spec) for spec in formats}
    for exporter in exporters.values():
        exporter.check_available()

    model_arg = request.model or DEFAULT_MODEL
    out = Path(request.out) if request.out else Path.cwd() / f"{_slug(Path(model_arg).name)}.bundle"
    out = out.expanduser().absolute()
    _check_destination(out, request.force)

    model_path, hub_id = locate(model_arg)
    config = read_config(model_path)
    recipe = recipe_for_config(config, request.recipe)
    if not any(a in recipe.architectures for a in config.get("architectures") or []):
        raise ModelSourceError(f"recipe '{recipe.name}' is for {', '.join(recipe.architectures)}, "
                               f"not {', '.join(config.get('architectures') or ['?'])}")
    with progress.task("Checking the source weights (safetensors headers, sha256)") as advance:
        source = scan_weights(model_path, hub_id, config, hash_progress=advance)
    targets, formats, skipped = _image_formats(source, recipe, formats, targets)
    recipe = recipe.with_defaults_for([s.name for s in formats])
    recipe = apply_overrides(recipe, list(request.overrides), [s.name for s in formats])
    settings = {spec.name: _device_limits(recipe.settings_for(spec.name), spec, targets) for spec in formats}
    for spec in formats:
        exporters[spec.name].check_settings(settings[spec.name], source)
    plan = _evaluation_plan(request.quality, recipe, source)
    vision_plan = _vision_plan(request.quality, recipe, source)
    calibration = _calibration(request, plan)
    needed = sum(exporters[s.name].estimate_output_bytes(source, settings[s.name]) for s in formats)
    _check_free_space(out.parent, int(needed * 1.1))

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    folders = BuildFolders(out)
    try:
        manifest = _build_into(folders.staging, folders.work, source, recipe, targets, formats, exporters,
                               settings, plan, calibration, progress, started, vision_plan, skipped)
        with progress.task("Verifying the bundle") as advance:
            verify_bundle(folders.staging, progress=advance).raise_for_problems()
        if request.signing_key is not None:
            sign_bundle(folders.staging, request.signing_key, request.signer)
        _move_into_place(folders.staging, out, request.force)
    except BaseException as exc:
        kept = folders.failed()
        if kept and isinstance(exc, EdgeslmError) and exc.hint:
            exc.hint = exc.hint.replace(str(folders.work), str(kept))  # the logs the hint names moved
        if isinstance(exc, OSError):
            if exc.errno == 28:
                raise DiskSpaceError(f"out of disk space while building into {out.parent}",
                                     hint="free some space or pass [[out]] on a larger disk") from None
            raise BuildError(f"build failed: {exc}",
                             hint=f"converter logs are in {kept}" if kept else None) from exc
        raise
    folders.succeeded()
    archive = pack_bundle(out, force=request.force) if request.pack else None
    return BuildResult(out, manifest, archive, time.monotonic() - started)


def _evaluation_plan(request: QualityRequest, recipe: Recipe, source: SourceModel) -> EvaluationPlan | None:
    """The windows every artifact is scored on (tokenized now, so a bad text fails before any export)."""
    if request.skip:
        return None
    text = evaluation_text(request.text_path)
    count = request.windows or recipe.quality.windows
    length = request.window_tokens or recipe.quality.window_tokens
    return EvaluationPlan(text, text.windows(source.path / "tokenizer.json", count, length), length,
                          recipe.quality.max_perplexity_increase, request.allow_loss)


def _image_formats(source: SourceModel, recipe: Recipe, formats: list[FormatSpec],
                   targets: list[Target]) -> tuple[list[Target], list[FormatSpec], tuple[str, ...]]:
    """A model that takes images is built only into the formats its recipe has settings for (those whose
    exporters build its image parts): a target's other formats are skipped, with a manifest warning, and a
    target left with none is refused. Text models: everything as given."""
    if "Phi3VForCausalLM" not in (source.config.get("architectures") or []):
        return targets, formats, ()
    skipped = tuple(s.name for s in formats if s.name not in recipe.formats)
    if not skipped:
        return targets, formats, ()
    empty = [t.name for t in targets if not set(t.formats) - set(skipped)]
    if empty:
        raise UsageError(f"{source.name} takes images; edgeslm builds it for {', '.join(recipe.formats)} only, and "
                         f"target {', '.join(empty)} takes none of them",
                         hint="pick targets that take ONNX, MLX, OpenVINO or QNN artifacts, e.g. cpu-x86_64, "
                              "raspberrypi5, jetson-orin, apple-silicon, intel-core-ultra, snapdragon-x-elite")
    kept = [dataclasses.replace(t, formats=tuple(f for f in t.formats if f not in skipped)) for t in targets]
    notes = tuple(f"{name}: not built, {source.name} takes images and edgeslm builds it for "
                  f"{', '.join(recipe.formats)} only" for name in skipped)
    return kept, [s for s in formats if s.name not in skipped], notes


def _device_limits(settings, spec: FormatSpec, targets: list[Target]):
    """A target's ``planning.num_crops`` caps the crops per image of the artifacts it takes (the smallest
    cap of the targets sharing an artifact wins): fewer crops, fewer image tokens on a small device."""
    caps = [t.planning.num_crops for t in targets if spec.name in t.formats and t.planning.num_crops]
    if caps and hasattr(settings, "num_crops") and min(caps) < settings.num_crops:
        return dataclasses.replace(settings, num_crops=min(caps))
    return settings


def _vision_plan(request: QualityRequest, recipe: Recipe, source: SourceModel) -> VisionEvalPlan | None:
    """The image questions a vision model's artifacts answer (loaded now, so a bad set fails at once)."""
    if request.skip or "Phi3VForCausalLM" not in (source.config.get("architectures") or []):
        if request.vision_eval and not request.skip:
            raise UsageError(f"[[vision_eval]] applies to models that take images; {source.name} is text-only")
        return None
    import importlib.util

    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise BackendMissingError(f"measuring a vision artifact needs edgeslm's torch reference ({', '.join(missing)} "
                                  "not installed)", hint="pip install 'edgeslm[build-onnx-builder]', or build with "
                                                         "[[no_eval]]")
    return vision_eval_plan(request.vision_eval, recipe.quality.vision_questions, recipe.quality.max_accuracy_drop,
                            request.allow_loss)


def _calibration(request: BuildRequest, plan: EvaluationPlan | None) -> BuildText:
    if request.calibration_text is not None and not Path(request.calibration_text).is_file():
        raise UsageError(f"calibration text {request.calibration_text} does not exist")
    user_eval = plan.text.path if plan and plan.text.origin == "--eval-text" else None
    used = len(plan.windows) * plan.window_tokens if plan else 0
    return calibration_text(request.calibration_text, user_eval, used)


def _build_into(staging: Path, work: Path, source: SourceModel, recipe: Recipe, targets: list[Target],
                formats: list[FormatSpec], exporters: dict, settings: dict, plan: EvaluationPlan | None,
                calibration: BuildText, progress: Progress, started: float,
                vision_plan: VisionEvalPlan | None = None, notes: tuple[str, ...] = ()) -> Manifest:
    chat = chat_info(source.path, recipe.stop_tokens)
    packages: dict[str, str] = {}
    artifacts = []
    reference = None
    vision_refs: dict[int, VisionReference] = {}  # by num_crops
    if plan:
        with progress.task(f"Source reference (fp32, layer by layer) on {len(plan.windows)}×{plan.window_tokens} "
                           f"tokens of {plan.text.label}"):
            reference = SourceReference.compute(source.path, source.config, plan, work)
    for spec in formats:
        art_dir = staging / "artifacts" / spec.name
        art_dir.mkdir(parents=True)
        takers = [t for t in targets if spec.name in t.formats]
        default_total = max(t.planning.default_context_length for t in takers)
        socs = tuple(t.soc for t in takers) if all(t.soc for t in takers) else ()
        job = ExportJob(source, spec, settings[spec.name], art_dir, work, default_total, calibration, socs)
        result = exporters[spec.name].export(job, progress)
        packages.update(result.packages)
        quality = None
        if plan and reference:
            with progress.task(f"{spec.name}: perplexity and KL against the source"):
                quality = score_artifact(plan, reference, spec, art_dir)
        if vision_plan and result.vision is not None:
            crops = result.vision.num_crops
            if crops not in vision_refs:
                with progress.task(f"Vision reference (fp32 torch) on {len(vision_plan.questions)} questions of "
                                   f"{vision_plan.label}"):
                    vision_refs[crops] = VisionReference.compute(source.path, vision_plan, crops)
            with progress.task(f"{spec.name}: image-question accuracy and features against the reference"):
                accuracy = score_vision(vision_plan, vision_refs[crops], source.path, backend_of(spec).scorer(),
                                        art_dir, spec.name)
            result = dataclasses.replace(result, vision=dataclasses.replace(result.vision, accuracy=accuracy))
        files = _hash_tree(staging, art_dir, progress, f"{spec.name}: checksums")
        artifacts.append(_artifact_entry(spec, result, files, default_total, quality))
    target_map = {t.name: TargetEntry(tuple(t.formats), t.planning.default_context_length,
                                      int(t.planning.reserve_ram_gb * 2**30)) for t in targets}
    digest = hashlib.sha256("".join(f.sha256 for a in artifacts for f in a.files).encode()).hexdigest()
    manifest = Manifest(
        schema=SCHEMA,
        schema_version=SCHEMA_VERSION,
        bundle_id=f"{_slug(source.name)}-{digest[:12]}",
        model=model_info(source),
        chat=chat,
        artifacts=tuple(artifacts),
        targets=target_map,
        provenance=Provenance(
            edgeslm_version=__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            packages=dict(sorted(packages.items())),
            recipe=recipe.to_json(),
            build_host={"os": platform.system().lower(), "machine": platform.machine(),
                        "python": platform.python_version()},
            duration_s=round(time.monotonic() - started, 2),
        ),
        warnings=notes + _warnings(plan, artifacts),
    )
    write_manifest(manifest, staging)
    return manifest


def _warnings(plan: EvaluationPlan | None, artifacts: list[Artifact]) -> tuple[str, ...]:
    if plan is None:
        return ("quality not measured: built with --no-eval; no artifact was checked against its source",)
    text = [f"{a.id}: perplexity {a.quality.relative_change:+.2%} against the source is over the recipe's "
            f"limit of +{a.quality.max_relative_change:.0%}; kept with --allow-quality-loss"
            for a in artifacts if a.quality and a.quality.allowed_loss]
    images = [f"{a.id}: image-question accuracy {a.vision.accuracy.artifact:.1%} is more than "
              f"{a.vision.accuracy.max_drop:.0%} below the reference's {a.vision.accuracy.source:.1%}; kept with "
              f"--allow-quality-loss" for a in artifacts
              if a.vision and a.vision.accuracy and not a.vision.accuracy.within_limit]
    return tuple(text + images)


def _artifact_entry(spec: FormatSpec, result: ExportResult, files: tuple[FileEntry, ...], default_total: int,
                    quality) -> Artifact:
    built_with = version_of(spec.runtime_package.replace("-cuda", "")) or spec.runtime_min_version
    release = ".".join(built_with.split(".")[:2]) + ".0"
    min_version = max(release, spec.runtime_min_version, key=lambda v: tuple(int(x) for x in v.split(".")[:3]))
    return Artifact(
        id=spec.name,
        format=spec.name,
        path=f"artifacts/{spec.name}",
        runtime=Runtime(spec.runtime_package, min_version),
        device_kinds=(spec.device_kind,),
        cpu_archs=spec.cpu_archs,
        quantization=result.quantization,
        context=ContextEnvelope(result.max_total_tokens, result.max_prompt_tokens,
                                min(default_total, result.max_total_tokens)),
        memory=MemoryNeeds(result.weight_bytes, result.kv_cache_bytes_per_token, result.kv_cache_dtype,
                           result.runtime_overhead_bytes),
        files=files,
        quality=quality,
        details=result.details,
        vision=result.vision,
    )


def _hash_tree(root: Path, folder: Path, progress: Progress, label: str) -> tuple[FileEntry, ...]:
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    entries = []
    with progress.task(label, total=sum(p.stat().st_size for p in paths)) as advance:
        for path in paths:
            entries.append(FileEntry(path.relative_to(root).as_posix(), path.stat().st_size,
                                     sha256_file(path, advance)))
    return tuple(entries)


def _check_destination(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise OutputExistsError(f"output {out} already exists", hint="pass [[force]] to replace it, or [[out]] elsewhere")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {out} exists and is not a folder")


def _check_free_space(folder: Path, needed: int) -> None:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise DiskSpaceError(f"not enough disk space in {probe}: the build needs about {needed / 2**20:,.0f} MiB, "
                             f"{free / 2**20:,.0f} MiB are free", hint="free some space or pass [[out]] on a larger disk")


def _move_into_place(staging: Path, out: Path, force: bool) -> None:
    if out.exists():
        if not force:
            raise OutputExistsError(f"output {out} appeared during the build", hint="pass [[force]] to replace it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, out)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "model"
