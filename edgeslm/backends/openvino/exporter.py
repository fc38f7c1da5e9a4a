"""Build side of the OpenVINO format: optimum-intel export + NNCF weight compression, as a library.

Produces a stateful ``openvino_model.xml/.bin`` (text-generation-with-past) and the OpenVINO
tokenizer and detokenizer IRs (openvino-tokenizers), so the device needs neither transformers nor
torch. The weight compression actually present in the IR is counted and recorded in the manifest.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from ...builder.captured_output import captured_output
from ...builder.exporter import ExportJob, ExportResult, require_modules
from ...builder.source import SourceModel
from ...builder.text_windows import BuildText
from ...errors import BackendMissingError, BuildError, UsageError
from ...model_shape import ModelShape
from ...package_versions import version_of
from ...progress import Progress
from .ir_inspection import weight_compression_stats
from .settings import OpenVinoSettings

KV_BYTES = 2  # f16 KV cache (GPU/NPU; CPU may use u8 or f16): planning figure per element


class OpenVinoExporter:
    modules = ("optimum.intel", "nncf", "openvino", "openvino_tokenizers", "transformers", "torch")

    def check_available(self) -> None:
        require_modules(self.modules, "the OpenVINO exporter", "build-openvino")

    def check_settings(self, settings: OpenVinoSettings, source: SourceModel) -> None:
        problems = settings.problems(source.config)
        if problems:
            raise UsageError(f"openvino-int4 settings cannot work: {'; '.join(problems)}")

    def estimate_output_bytes(self, source: SourceModel, settings: OpenVinoSettings) -> int:
        per_weight = 0.6 if settings.bits == 4 else 1.1
        return int(source.parameter_count * per_weight + 64 * 2**20)

    def export(self, job: ExportJob, progress: Progress) -> ExportResult:
        settings: OpenVinoSettings = job.settings
        self.check_available()
        calibration = _calibration_texts(job, settings)
        self.check_settings(settings, job.source)
        log_path = job.work_dir / f"{job.fmt.name}-export.log"
        src = str(job.source.path)
        with progress.task(f"{job.fmt.name}: export to OpenVINO IR and compress weights (NNCF)"):
            try:
                with captured_output(log_path):
                    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

                    qconfig = OVWeightQuantizationConfig(
                        bits=settings.bits, sym=settings.symmetric, group_size=settings.group_size,
                        ratio=settings.ratio, quant_method="awq" if settings.awq else "default",
                        scale_estimation=settings.scale_estimation or None, gptq=settings.gptq or None,
                        dataset=calibration, tokenizer=src if calibration else None,
                        num_samples=settings.calibration_samples if calibration else None,
                        backup_precision=None if settings.backup_precision == "none" else settings.backup_precision,
                    )
                    model = OVModelForCausalLM.from_pretrained(src, export=True, stateful=True, compile=False,
                                                               quantization_config=qconfig, local_files_only=True)
                    model.save_pretrained(job.out_dir)
                    del model
            except (UsageError, BackendMissingError):
                raise
            except Exception as exc:
                raise BuildError(f"{job.fmt.name}: the optimum-intel export failed: {type(exc).__name__}: {exc}",
                                 hint=f"see the export log {log_path}") from exc
        with progress.task(f"{job.fmt.name}: OpenVINO tokenizer and detokenizer"):
            _convert_tokenizer(job.source.path, job.out_dir, log_path)
        stats = weight_compression_stats(job.out_dir / "openvino_model.xml")
        cfg = job.source.config
        max_total = int(cfg.get("max_position_embeddings", job.default_total_tokens))
        npu_total = settings.npu_max_prompt_len + settings.npu_min_response_len
        return ExportResult(
            quantization={"method": "NNCF weight compression", **asdict(settings),
                          "calibration_text": _calibration_source(job, settings).label if calibration else "",
                          "ir_weights": stats},
            max_total_tokens=max_total,
            max_prompt_tokens=max_total - 1,
            kv_cache_bytes_per_token=ModelShape.of(cfg).kv_cache_bytes_per_token(KV_BYTES),
            kv_cache_dtype="float16",
            weight_bytes=(job.out_dir / "openvino_model.bin").stat().st_size,
            runtime_overhead_bytes=400 * 2**20,
            details={
                "devices": list(settings.devices),
                "device_context": {"npu": {"max_prompt_tokens": settings.npu_max_prompt_len,
                                           "max_total_tokens": npu_total,
                                           "min_response_tokens": settings.npu_min_response_len}},
                "npu_properties": {"MAX_PROMPT_LEN": settings.npu_max_prompt_len,
                                   "MIN_RESPONSE_LEN": settings.npu_min_response_len},
                "npu_suitable": not settings.problems(job.source.config) if "NPU" in settings.devices else False,
                "openvino_version": version_of("openvino") or "",
                "model_xml": "openvino_model.xml",
            },
            packages={name: version_of(name) or "not installed" for name in (
                "openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel", "optimum", "nncf",
                "transformers", "torch")},
        )


def _calibration_source(job: ExportJob, settings: OpenVinoSettings) -> BuildText:
    """--calibration-text, else the recipe's calibration_text, else the build's default choice."""
    if settings.calibration_text and job.calibration.origin != "--calibration-text":
        return BuildText(Path(settings.calibration_text), "recipe calibration_text")
    return job.calibration


def _calibration_texts(job: ExportJob, settings: OpenVinoSettings) -> list[str] | None:
    if not settings.data_aware:
        return None
    source = _calibration_source(job, settings)
    text = source.text_after_skip(job.source.path / "tokenizer.json")
    chunks = [c.strip() for c in text.split("\n\n") if len(c.strip()) > 200]
    if len(chunks) < settings.calibration_samples // 4 or not chunks:
        raise UsageError(f"the calibration text {source.path} ({source.origin}) has only {len(chunks)} usable "
                         "paragraphs",
                         hint="give a longer text or lower calibration_samples")
    return chunks[: settings.calibration_samples]


def _convert_tokenizer(source: Path, out_dir: Path, log_path: Path) -> None:
    with captured_output(log_path):
        import openvino as ov
        from openvino_tokenizers import convert_tokenizer
        from transformers import AutoTokenizer

        hf_tokenizer = AutoTokenizer.from_pretrained(str(source))
        tokenizer, detokenizer = convert_tokenizer(hf_tokenizer, with_detokenizer=True)
        ov.save_model(tokenizer, str(out_dir / "openvino_tokenizer.xml"))
        ov.save_model(detokenizer, str(out_dir / "openvino_detokenizer.xml"))
        hf_tokenizer.save_pretrained(str(out_dir))
    for name in ("generation_config.json",):
        if (source / name).is_file() and not (out_dir / name).exists():
            shutil.copy2(source / name, out_dir / name)


EXPORTER = OpenVinoExporter()
