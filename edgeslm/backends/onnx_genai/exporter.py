"""Build side of the ONNX formats: edgeslm's streaming exporter, or onnxruntime-genai's builder on request.

The default (``exporter = "streaming"``) writes the Phi-3 decoder graph onnxruntime-genai runs one
tensor at a time from the memory-mapped checkpoint (``streaming_export``): ~1 GB of RAM for the 3.8B
model where the builder needs 23 GB, and no torch or transformers in the build environment.
``exporter = "ort-builder"`` calls onnxruntime-genai's model builder (``builder_exporter``), for
architectures the streaming exporter does not build and for comparisons.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from ...builder.exporter import ExportJob, ExportResult, converter_errors, require_modules
from ...builder.source import SourceModel
from ...errors import BuildError, UsageError
from ...model_shape import ModelShape
from ...package_versions import version_of
from ...progress import Progress
from .builder_exporter import OrtBuilderExporter
from .settings import OnnxSettings

STREAMING_MODULES = ("onnx_ir", "onnxruntime", "numpy")
_BYTES = {"float32": 4, "float16": 2}


class OnnxExporter:
    def __init__(self) -> None:
        self.builder = OrtBuilderExporter()

    def check_available(self) -> None:
        require_modules(STREAMING_MODULES, "the ONNX exporter", "build-onnx")

    def check_settings(self, settings: OnnxSettings, source: SourceModel) -> None:
        if settings.exporter == "ort-builder":
            from .phi3v_export import is_vision_checkpoint

            if is_vision_checkpoint(source.config):
                raise UsageError("onnxruntime-genai's builder exports Phi-3.5-vision's text decoder only",
                                 hint="drop exporter=ort-builder: edgeslm's streaming exporter builds all three parts")
            self.builder.check_available()
            # embedding applies to the streaming exporter only: the builder keeps the table in the I/O dtype,
            # and its manifest entry says so
            return self.builder.check_settings(settings, source)
        from .phi3v_export import check_vision_tensors, is_vision_checkpoint
        from .streaming_export import check_checkpoint

        check_checkpoint(source.path, source.config)
        if is_vision_checkpoint(source.config):
            check_vision_tensors(source.path, source.config)
        if settings.algorithm == "k_quant":
            raise UsageError("the streaming ONNX exporter quantizes round-to-nearest; algorithm=k_quant needs the "
                             "builder", hint="add [[set]] onnx-int4-cpu.exporter=ort-builder, or drop algorithm")
        if settings.embedding == "int4" and ModelShape.of(source.config).hidden_size % 16:
            raise UsageError("an int4 embedding table needs a hidden size divisible by 16",
                             hint="use [[set]] onnx-int4-cpu.embedding=float16")
        return None

    def estimate_output_bytes(self, source: SourceModel, settings: OnnxSettings) -> int:
        if settings.exporter == "ort-builder":
            return self.builder.estimate_output_bytes(source, settings)
        shape = ModelShape.of(source.config)
        embed = shape.vocab_size * shape.hidden_size
        table = {"float32": 4, "float16": 2, "int4": 0.6}[settings.embedding_dtype]
        per_weight = 0.6 if settings.precision == "int4" else 1.1
        return int(embed * table + max(source.parameter_count - embed, 0) * per_weight + 64 * 2**20)

    def export(self, job: ExportJob, progress: Progress) -> ExportResult:
        settings: OnnxSettings = job.settings
        if settings.exporter == "ort-builder":
            return self.builder.export(job, progress)
        self.check_available()
        from .genai_files import write_genai_files
        from .phi3v_export import EMBEDDING_FILE, TEXT_FILE, VISION_FILE, export_vision_parts, is_vision_checkpoint
        from .streaming_export import decoder_plan, stream_decoder

        config = job.source.config
        takes_images = is_vision_checkpoint(config)
        io_dtype = "float16" if settings.execution_provider == "cuda" else "float32"
        plan = decoder_plan(config, io_dtype=io_dtype, bits=4 if settings.precision == "int4" else 8,
                            inputs_embeds=takes_images,
                            block_size=settings.block_size, symmetric=settings.symmetric,
                            accuracy_level=settings.accuracy_level, quantize_lm_head=settings.quantize_lm_head,
                            embedding=settings.embedding_dtype,
                            embedding_block=embedding_block(config, settings.block_size))
        max_total = int(config.get("max_position_embeddings", job.default_total_tokens))
        default_total = min(job.default_total_tokens, max_total)
        log_path = job.work_dir / f"{job.fmt.name}-export.log"
        started = time.perf_counter()
        with progress.task(f"{job.fmt.name}: stream, quantize and write tensors", total=1.0) as advance, \
                converter_errors(job.fmt.name, "the streaming ONNX exporter", log_path), \
                open(log_path, "w", encoding="utf-8") as log:
            log.write(f"streaming export of {job.source.path} with {settings}\n")

            def written(name: str, done: int, total: int) -> None:  # the bar counts fractions of the tensors
                log.write(f"{time.perf_counter() - started:8.1f}s {done:5d}/{total} {name}\n")
                advance(1 / total)

            parts = None
            if takes_images:
                stream_decoder(job.source.path, job.out_dir, plan, on_tensor=written, filename=TEXT_FILE)
                parts = export_vision_parts(job.source.path, job.out_dir, config, precision=settings.vision_precision,
                                            io_dtype=io_dtype, table=settings.embedding_dtype,
                                            table_block=plan.embedding_block)
                log.write(f"vision part {parts.vision_bytes} bytes, embedding part {parts.embedding_bytes} bytes\n")
            else:
                stream_decoder(job.source.path, job.out_dir, plan, on_tensor=written)
            write_genai_files(job.source.path, job.out_dir, config, default_total,
                              provider=settings.execution_provider, filename=TEXT_FILE if takes_images else "model.onnx",
                              vision=(VISION_FILE, EMBEDDING_FILE, settings.num_crops) if takes_images else None)
            log.write(f"done in {time.perf_counter() - started:.1f}s\n")
        weight_bytes = sum(p.stat().st_size for p in job.out_dir.glob("*.onnx*"))
        if weight_bytes == 0:
            raise BuildError(f"{job.fmt.name}: the streaming exporter wrote no weights")
        return ExportResult(
            quantization={"method": "MatMulNBits weight-only (MLAS round-to-nearest)", **asdict(settings),
                          "embedding": settings.embedding_dtype,
                          **({"embedding_block_size": plan.embedding_block} if settings.embedding_dtype == "int4" else {})},
            max_total_tokens=max_total,
            max_prompt_tokens=max_total - 1,
            kv_cache_bytes_per_token=plan.shape.kv_cache_bytes_per_token(_BYTES[io_dtype]),
            kv_cache_dtype=io_dtype,
            weight_bytes=weight_bytes,
            runtime_overhead_bytes=300 * 2**20,
            details={"genai_config": "genai_config.json", "execution_provider": settings.execution_provider,
                     "exporter": "edgeslm streaming (onnx_ir)"},
            packages={name: version_of(name) or "not installed"
                      for name in ("onnx-ir", "onnxruntime", "onnxruntime-genai", "numpy")},
            vision=vision_info(parts, settings) if parts else None,
        )


def vision_info(parts, settings: OnnxSettings):
    """The manifest's image facts: crop budget, tokens per image, the vision part's size and activations."""
    from ...bundle.manifest import VisionInfo
    from ...vision.phi3v_processor import tokens_per_crop_grid

    plan = parts.plan
    crops = settings.num_crops + 1
    positions = plan.grid ** 2 + 1
    # the widest activations: every crop's CLIP MLP (fp32) plus its attention scores, and the input pixels
    activations = 4 * crops * positions * (2 * plan.clip_intermediate + plan.clip_heads * positions + 4 * plan.clip_hidden)
    return VisionInfo(
        num_crops=settings.num_crops, tokens_per_crop=plan.tokens_per_crop,
        tokens_per_image={str(n): max(tokens_per_crop_grid(n).values()) for n in (1, 2, 4, 8, 16)},
        tokens_by_grid=tokens_per_crop_grid(settings.num_crops),
        vision_weight_bytes=parts.vision_bytes, vision_runtime_bytes=int(activations + 4 * crops * 3 * 336 * 336),
        precision=settings.vision_precision)


def embedding_block(config: dict, block_size: int) -> int:
    """GatherBlockQuantized needs whole blocks along the hidden size: the recipe's block size where it
    divides it, else the largest smaller power of two that does (e.g. 64 for a width of 192)."""
    hidden = ModelShape.of(config).hidden_size
    size = block_size
    while size > 16 and hidden % size:
        size //= 2
    return size


EXPORTER = OnnxExporter()
