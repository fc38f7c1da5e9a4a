"""Build side of the OpenVINO format: a stateful int4 IR, by one of two exporters, as a library.

``exporter = "onnx-streaming"`` (the default): edgeslm's streaming int4 ONNX, converted by
``openvino.convert_model`` and rewritten into optimum-intel's interface and NNCF's weight forms
(``onnx_route``): ~2-3 GB of RAM at 3.8B, no torch. ``exporter = "optimum-intel"``: optimum-intel
exports the torch model and NNCF compresses it (~11 GB at 3.8B; channel-wise and data-aware options).

Both produce a stateful ``openvino_model.xml/.bin`` (text-generation-with-past) and the OpenVINO
tokenizer and detokenizer IRs (openvino-tokenizers), so the device needs neither transformers nor
torch. The weight compression actually present in the IR is counted and recorded in the manifest.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

from ...builder.captured_output import captured_output
from ...builder.exporter import ExportJob, ExportResult, converter_errors, require_modules
from ...builder.source import SourceModel
from ...builder.text_windows import BuildText
from ...errors import BackendMissingError, BuildError, UsageError
from ...model_shape import ModelShape
from ...package_versions import version_of
from ...progress import Progress
from .ir_inspection import weight_compression_stats
from .onnx_route import ONNX_MODULES, route_problems
from .settings import OpenVinoSettings

_PACKAGES = {"optimum-intel": ("openvino", "openvino-genai", "openvino-tokenizers", "optimum-intel", "optimum", "nncf",
                              "transformers", "torch"),
             "onnx-streaming": ("openvino", "openvino-genai", "openvino-tokenizers", "onnx-ir", "onnxruntime",
                                "transformers", "numpy")}
KV_BYTES = 2  # f16 KV cache (GPU/NPU; CPU may use u8 or f16): planning figure per element


class OpenVinoExporter:
    modules = ("openvino", "openvino_tokenizers", "transformers")  # both routes (tokenizer IRs)
    route_modules = {"optimum-intel": ("optimum.intel", "nncf", "torch"), "onnx-streaming": ONNX_MODULES}

    def check_available(self, settings: OpenVinoSettings | None = None) -> None:
        needed = self.modules + (self.route_modules[settings.exporter] if settings else ())
        what = f"the OpenVINO exporter ({settings.exporter})" if settings else "the OpenVINO exporter"
        require_modules(tuple(dict.fromkeys(needed)), what, "build-openvino")

    def check_settings(self, settings: OpenVinoSettings, source: SourceModel) -> None:
        self.check_available(settings)
        problems = settings.problems(source.config)
        if problems:
            route_only = settings.exporter == "onnx-streaming" and route_problems(settings)
            raise UsageError(f"openvino-int4 settings cannot work: {'; '.join(problems)}",
                             hint="[[set]] openvino-int4.exporter=optimum-intel takes channel-wise and data-aware "
                             "options" if route_only else None)
        if settings.exporter == "onnx-streaming":
            from ..onnx_genai.streaming_export import check_checkpoint

            check_checkpoint(source.path, source.config)
        from ..onnx_genai.phi3v_export import check_vision_tensors, is_vision_checkpoint

        if is_vision_checkpoint(source.config):
            if settings.exporter != "onnx-streaming":
                raise UsageError("optimum-intel exports Phi-3.5-vision only with the checkpoint's remote code, which "
                                 "edgeslm never runs", hint="drop exporter=optimum-intel: edgeslm's own route builds "
                                                            "the VLMPipeline file set")
            from .vision_modules import check_width

            require_modules(("torch", "nncf"), "the OpenVINO vision exporter", "build-openvino")
            check_width(check_vision_tensors(source.path, source.config))

    def estimate_output_bytes(self, source: SourceModel, settings: OpenVinoSettings) -> int:
        per_weight = 0.6 if settings.bits == 4 else 1.1
        return int(source.parameter_count * per_weight + 64 * 2**20)

    def export(self, job: ExportJob, progress: Progress) -> ExportResult:
        settings: OpenVinoSettings = job.settings
        self.check_settings(settings, job.source)
        log_path = job.work_dir / f"{job.fmt.name}-export.log"
        from ..onnx_genai.phi3v_export import is_vision_checkpoint

        if is_vision_checkpoint(job.source.config):
            from .vision_export import export_vision_artifact, tokenizer_view, vision_result

            details = export_vision_artifact(job, progress, log_path)
            with progress.task(f"{job.fmt.name}: OpenVINO tokenizer and detokenizer"):
                view = tokenizer_view(job.source.path, job.work_dir / f"{job.fmt.name}-tokenizer-view")
                _convert_tokenizer(view, job.out_dir, log_path)
            method = "round-to-nearest int4_sym (MLAS) + int8_sym lm_head/table; vision parts NNCF " + \
                settings.vision_precision
            return vision_result(job, settings, details, method, _result(job, settings, method, {},
                                                                          "openvino_language_model.xml"))
        if settings.exporter == "onnx-streaming":
            method, details = "round-to-nearest int4_sym (MLAS) + int8_sym tables", _onnx_route(job, progress, log_path)
        else:
            method, details = "NNCF weight compression", _optimum_route(job, settings, progress, log_path)
        with progress.task(f"{job.fmt.name}: OpenVINO tokenizer and detokenizer"):
            _convert_tokenizer(job.source.path, job.out_dir, log_path)
        return _result(job, settings, method, details)


def _onnx_route(job: ExportJob, progress: Progress, log_path: Path) -> dict:
    from .onnx_route import convert_in_child, stream_onnx

    settings: OpenVinoSettings = job.settings
    onnx_dir = job.work_dir / f"{job.fmt.name}-onnx"
    started = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        with progress.task(f"{job.fmt.name}: stream, quantize and write the int4 ONNX", total=1.0) as advance, \
                converter_errors(job.fmt.name, "the streaming ONNX exporter", log_path):
            def written(name: str, done: int, total: int) -> None:
                log.write(f"{time.perf_counter() - started:8.1f}s {done:5d}/{total} {name}\n")
                advance(1 / total)

            onnx_path = stream_onnx(job.source.path, onnx_dir, job.source.config, settings.group_size, written)
        log.write(f"onnx written in {time.perf_counter() - started:.1f}s\n")
        log.flush()
        with progress.task(f"{job.fmt.name}: convert to OpenVINO IR (stateful, i4/i8 weights)"), \
                converter_errors(job.fmt.name, "openvino.convert_model", log_path):
            ir = convert_in_child(onnx_path, job.out_dir, compress_to_fp16=True)
        log.write(f"converted in {time.perf_counter() - started:.1f}s: {ir}\n")
    shutil.rmtree(onnx_dir, ignore_errors=True)
    for name in ("config.json",):
        shutil.copy2(job.source.path / name, job.out_dir / name)
    return {"exporter": "onnx-streaming (edgeslm streaming ONNX + openvino.convert_model)",
            "conversion": {"attention_rebuilt": ir.attention_replaced, "int4_weights": ir.int4_weights,
                           "int8_weights": ir.int8_weights, "kv_states": ir.kv_states}}


def _optimum_route(job: ExportJob, settings: OpenVinoSettings, progress: Progress, log_path: Path) -> dict:
    calibration = _calibration_texts(job, settings)
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
    return {"exporter": "optimum-intel", "calibration_text": _calibration_source(job, settings).label
            if calibration else ""}


def _result(job: ExportJob, settings: OpenVinoSettings, method: str, route: dict,
            model_xml: str = "openvino_model.xml") -> ExportResult:
    stats = weight_compression_stats(job.out_dir / model_xml)
    cfg = job.source.config
    max_total = int(cfg.get("max_position_embeddings", job.default_total_tokens))
    npu_total = settings.npu_max_prompt_len + settings.npu_min_response_len
    options = asdict(settings)
    if model_xml == "openvino_model.xml":  # a text model: the image options do not apply
        options.pop("num_crops"), options.pop("vision_precision")
    return ExportResult(
        quantization={"method": method, **options,
                      "calibration_text": route.pop("calibration_text", ""),
                      "ir_weights": stats},
        max_total_tokens=max_total,
        max_prompt_tokens=max_total - 1,
        kv_cache_bytes_per_token=ModelShape.of(cfg).kv_cache_bytes_per_token(KV_BYTES),
        kv_cache_dtype="float16",
        weight_bytes=(job.out_dir / model_xml).with_suffix(".bin").stat().st_size,
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
            **route,
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
