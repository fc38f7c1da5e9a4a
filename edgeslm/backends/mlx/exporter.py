"""Build side of the MLX format: mlx-lm's loading, quantization and saving, called as a library.

The steps of ``mlx_lm convert -q`` (lazy load, cast, affine quantization, sharded save with the
tokenizer) plus what a plain convert gets wrong or leaves out: Phi-3 LongRoPE runs with the short
factors (see longrope.py), optional AWQ on a calibration text, and the bits and group size are read
back from the written tensors for the manifest.

A Phi-3.5-vision checkpoint (``Phi3VForCausalLM``, which mlx-lm does not load) is converted as its
Phi-3 text decoder (the vision tensors dropped, config of model type ``phi3``), quantized the same way,
and gets its vision part beside it in float16 (``vision_export``), which ``vision_tower`` runs on the
device: no mlx-vlm on either side (README, "Apple silicon Macs (MLX)", says why).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...builder.captured_output import captured_output
from ...builder.exporter import ExportJob, ExportResult, converter_errors, require_modules
from ...builder.source import SourceModel
from ...errors import BuildError, UsageError
from ...model_shape import ModelShape
from ...package_versions import version_of
from ...progress import Progress
from . import longrope
from .awq_phi3 import awq_quantize_phi3
from .model_loading import metal_available
from .settings import MlxSettings
from .vision_export import VISION_CONFIG, VISION_WEIGHTS, check_vision_checkpoint, export_vision, is_vision_checkpoint
from .weight_inspection import quantized_layers

_KV_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


class MlxExporter:
    modules = ("mlx.core", "mlx_lm", "transformers")

    def check_available(self) -> None:
        require_modules(self.modules, "the MLX exporter", "build-mlx")

    def check_settings(self, settings: MlxSettings, source: SourceModel) -> None:
        problems = settings.problems(source.config)
        if problems:
            raise UsageError(f"mlx settings cannot work: {'; '.join(problems)}")
        if is_vision_checkpoint(source.config):
            check_vision_checkpoint(source.path, source.config)

    def estimate_output_bytes(self, source: SourceModel, settings: MlxSettings) -> int:
        per_weight = settings.bits / 8 + 4 / settings.group_size  # packed weights + fp16 scale and bias
        return int(source.parameter_count * per_weight + 64 * 2**20)

    def export(self, job: ExportJob, progress: Progress) -> ExportResult:
        settings: MlxSettings = job.settings
        self.check_available()
        self.check_settings(settings, job.source)
        windows = None
        if settings.method == "awq":
            windows = job.calibration.sequences(job.source.path / "tokenizer.json", settings.awq_samples,
                                                settings.awq_sequence_length)
        log_path = job.work_dir / f"{job.fmt.name}-convert.log"
        dtype = self._dtype(settings, job.source.config)
        title = (f"{job.fmt.name}: {settings.bits}-bit {'AWQ' if windows else 'quantization'} "
                 f"(group {settings.group_size}) with mlx-lm")
        with progress.task(title):
            with converter_errors(job.fmt.name, "mlx-lm conversion", log_path), captured_output(log_path):
                config = self._convert(job, settings, dtype, windows)
        (job.out_dir / "README.md").unlink(missing_ok=True)  # mlx-lm's hub model card
        vision = None
        if is_vision_checkpoint(job.source.config):
            with progress.task(f"{job.fmt.name}: vision part ({settings.vision_precision}), streamed"), \
                    converter_errors(job.fmt.name, "the MLX vision export", log_path):
                vision = export_vision(job.source.path, job.out_dir, job.source.config, settings.vision_precision)
        written = quantized_layers(job.out_dir, settings.group_size)
        wrong = {p: b for p, b in written["layers"].items() if b != settings.bits}
        if not written["layers"] or wrong:
            raise BuildError(f"{job.fmt.name}: the written weights do not have {settings.bits}-bit groups of "
                             f"{settings.group_size}: {len(written['layers'])} quantized layers, mismatched "
                             f"{sorted(wrong)[:3]}", hint=f"see the log {log_path}")
        cfg = job.source.config
        limit = longrope.context_limit(cfg)
        max_total = min(int(cfg.get("max_position_embeddings", job.default_total_tokens)), limit or 1 << 30)
        return ExportResult(
            quantization={**asdict(settings), "method": f"mlx-lm affine, {settings.method}", "algorithm": settings.method,
                          "dtype": dtype, "mode": config["quantization"].get("mode", "affine"),
                          "calibration_text": job.calibration.label if windows else "",
                          "quantized_layers": len(written["layers"]),
                          "bits_histogram": written["bits_histogram"]},
            max_total_tokens=max_total,
            max_prompt_tokens=max_total - 1,
            kv_cache_bytes_per_token=ModelShape.of(cfg).kv_cache_bytes_per_token(_KV_BYTES[dtype]),
            kv_cache_dtype=dtype,
            weight_bytes=sum(p.stat().st_size for p in job.out_dir.glob("model*.safetensors")),
            runtime_overhead_bytes=300 * 2**20,
            details={
                "bits": settings.bits,
                "group_size": settings.group_size,
                "rope": ("LongRoPE short factors, context capped at original_max_position_embeddings "
                         "(mlx-lm applies one factor set at every length)") if limit else "as in the source",
                "mlx_version": version_of("mlx") or "",
                "mlx_lm_version": version_of("mlx-lm") or "",
                **({"vision": f"{VISION_WEIGHTS} + {VISION_CONFIG}: CLIP up to layer "
                              f"{vision.config['clip_layers_run']}, HD merge and projection, "
                              f"{settings.vision_precision}, run by edgeslm's MLX vision forward"} if vision else {}),
            },
            packages={name: version_of(name) or "not installed" for name in ("mlx", "mlx-lm", "transformers")},
            vision=vision_info(vision, settings) if vision else None,
        )

    @staticmethod
    def _dtype(settings: MlxSettings, config: dict[str, Any]) -> str:
        if settings.dtype != "auto":
            return settings.dtype
        source = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
        return source if source in _KV_BYTES else "bfloat16"

    @staticmethod
    def _convert(job: ExportJob, settings: MlxSettings, dtype: str, windows: list[list[int]] | None) -> dict:
        import mlx.core as mx
        from mlx.utils import tree_map_with_path
        from mlx_lm.utils import load, quantize_model, save

        source = job.source.path
        if is_vision_checkpoint(job.source.config):
            source = _text_view(job.source.path, job.work_dir / f"{job.fmt.name}-text-view")
            model, tokenizer, config = _load_text_of_vision(job.source.path, source)
        else:
            model, tokenizer, config = load(str(job.source.path), lazy=True, return_config=True)
        longrope.apply_short_factors(model, config)
        config = longrope.short_factor_config(config)
        target = getattr(mx, dtype)

        def cast(to: Any) -> None:
            model.update(tree_map_with_path(
                lambda _, v: v.astype(to) if mx.issubdtype(v.dtype, mx.floating) else v, model.parameters()))

        if windows is not None:
            # AWQ runs the model hundreds of times; without Metal, bf16/fp16 quantized matmuls are
            # emulated (~9x slower), so the search runs in float32 and the result is cast afterwards.
            cast(target if metal_available() else mx.float32)
            awq_quantize_phi3(model, windows, settings.bits, settings.group_size, settings.awq_grid)
            cast(target)
            quant = {"group_size": settings.group_size, "bits": settings.bits, "mode": "affine"}
            config = {**config, "quantization": quant, "quantization_config": quant}
        else:
            cast(target)
            model, config = quantize_model(model, config, settings.group_size, settings.bits)
        config["torch_dtype"] = dtype
        save(str(job.out_dir), str(source), model, tokenizer, config)
        return config


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "added_tokens.json", "generation_config.json")


def _text_view(source: Path, view: Path) -> Path:
    """A folder that looks like the checkpoint's text model to transformers' AutoTokenizer (which does not know
    ``phi3_v``) and to mlx-lm's save (which copies the source's ``*.py``): the text config + the tokenizer files."""
    from ...builder.phi3v_config import text_config
    from ...errors import ModelSourceError
    from ...json_files import read_json

    view.mkdir(parents=True, exist_ok=True)
    config = text_config(read_json(source / "config.json", ModelSourceError))
    (view / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for name in _TOKENIZER_FILES:
        if (source / name).is_file() and not (view / name).exists():
            (view / name).symlink_to((source / name).resolve())
    return view


def _load_text_of_vision(path: Path, view: Path):
    """mlx-lm's Phi-3 model and tokenizer from a Phi-3.5-vision checkpoint: the text decoder only (strict:
    every text tensor loaded, the vision ones dropped), with the text config (model type ``phi3``)."""
    from mlx_lm.models import phi3
    from mlx_lm.utils import load_model, load_tokenizer

    from ...builder.phi3v_config import text_config

    class Phi3TextOfVision(phi3.Model):
        def sanitize(self, weights):
            return {k: v for k, v in weights.items() if not k.startswith("model.vision_embed_tokens.")}

    model, config = load_model(path, lazy=True, get_model_classes=lambda config: (Phi3TextOfVision, phi3.ModelArgs))
    tokenizer = load_tokenizer(view, {"trust_remote_code": False}, eos_token_ids=config.get("eos_token_id"))
    return model, tokenizer, text_config(config)


def vision_info(vision, settings: MlxSettings):
    """The manifest's image facts: crop budget, tokens per image, the vision part's size and activations."""
    from ...bundle.manifest import VisionInfo
    from ...vision.phi3v_processor import tokens_per_crop_grid
    from .vision_tower import CROP_BATCH

    cfg = vision.config
    crops = settings.num_crops + 1
    positions = (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1
    batch = min(CROP_BATCH, crops)
    # the widest activations (float32 without Metal): a batch of crops' CLIP MLP and attention scores, the pixels
    activations = 4 * batch * positions * (2 * cfg["clip_intermediate"] + cfg["clip_heads"] * positions
                                           + 4 * cfg["clip_hidden"])
    return VisionInfo(
        num_crops=settings.num_crops, tokens_per_crop=cfg["tokens_per_crop"],
        tokens_per_image={str(n): max(tokens_per_crop_grid(n).values()) for n in (1, 2, 4, 8, 16)},
        tokens_by_grid=tokens_per_crop_grid(settings.num_crops),
        vision_weight_bytes=vision.bytes, vision_runtime_bytes=int(activations + 4 * crops * 3 * 336 * 336),
        precision=settings.vision_precision)


EXPORTER = MlxExporter()
