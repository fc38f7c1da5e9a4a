"""Build side of the GGUF format: edgeslm's streaming GGUF writer (gguf-py + numpy), llama.cpp's quantizer
for K-quants, and the Ollama Modelfile.

Q4_0 and Q8_0 are written in one pass from the memory-mapped checkpoint (``streaming_writer``): no torch,
under 1 GB of RAM at 3.8B. Q4_K_M is a streamed F16 file in the work folder quantized by llama.cpp's
own ``llama_model_quantize`` (``llama_quantize``). The header is read back (``gguf_file``) for the
manifest: tensor types, and the checks the device repeats before loading.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from ...builder.captured_output import captured_output
from ...builder.exporter import ExportJob, ExportResult, converter_errors, require_modules
from ...builder.source import SourceModel
from ...errors import BuildError, UsageError
from ...model_shape import ModelShape
from ...package_versions import version_of
from ...progress import Progress
from .engine import GGUF_NAME
from .gguf_file import check_complete, read_header
from .phi3_layout import original_context
from .settings import GgufSettings

MODULES = ("gguf", "numpy")
_BYTES_PER_WEIGHT = {"Q4_0": 18 / 32, "Q8_0": 34 / 32, "Q4_K_M": 0.61}
_KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32}


class GgufExporter:
    def check_available(self) -> None:
        require_modules(MODULES, "the GGUF writer", "build-gguf")

    def check_settings(self, settings: GgufSettings, source: SourceModel) -> None:
        from .streaming_writer import check_checkpoint

        check_checkpoint(source.path, source.config)
        if not (source.path / "tokenizer.model").is_file():
            raise UsageError(f"{source.path.name} has no tokenizer.model, which the GGUF vocabulary is made from "
                             "(as llama.cpp's converter does)", hint="copy tokenizer.model from the model's hub page")
        if not settings.streamed:
            require_modules(("llama_cpp",), f"quant_type {settings.quant_type} (llama.cpp's quantizer)", "build-gguf")

    def estimate_output_bytes(self, source: SourceModel, settings: GgufSettings) -> int:
        size = source.parameter_count * _BYTES_PER_WEIGHT[settings.quant_type] + 64 * 2**20
        return int(size if settings.streamed else size + 2 * source.parameter_count)  # + the F16 intermediate

    def export(self, job: ExportJob, progress: Progress) -> ExportResult:
        from .modelfile import template_problem, write_modelfile
        from .streaming_writer import stream_gguf

        settings: GgufSettings = job.settings
        self.check_available()
        config = job.source.config
        out = job.out_dir / GGUF_NAME
        log_path = job.work_dir / f"{job.fmt.name}-export.log"
        started = time.perf_counter()
        streamed = out if settings.streamed else job.work_dir / "model-f16.gguf"
        weight_type = settings.quant_type if settings.streamed else "F16"
        output_type = settings.output_type if settings.streamed else "F16"
        with progress.task(f"{job.fmt.name}: stream, quantize ({weight_type}) and write tensors", total=1.0) as advance, \
                converter_errors(job.fmt.name, "the GGUF writer", log_path), captured_output(log_path), \
                open(log_path, "a", encoding="utf-8") as log:
            log.write(f"streaming GGUF export of {job.source.path} with {settings}\n")

            def written(name: str, done: int, total: int) -> None:  # the bar counts fractions of the tensors
                log.write(f"{time.perf_counter() - started:8.1f}s {done:5d}/{total} {name}\n")
                advance(1 / total)

            stream_gguf(job.source.path, config, streamed, job.source.name, settings.quant_type if settings.streamed
                        else "F16", weight_type, output_type, on_tensor=written)
        if not settings.streamed:
            from .llama_quantize import llama_quantize

            with progress.task(f"{job.fmt.name}: llama.cpp quantize to {settings.quant_type}"), \
                    converter_errors(job.fmt.name, "llama.cpp's quantizer", log_path):
                from ...runtime.host_probe import probe_host

                llama_quantize(streamed, out, settings.quant_type, probe_host().physical_cores, log_path)
                streamed.unlink()
        header = read_header(out)
        check_complete(header)
        default_total = min(job.default_total_tokens, int(config.get("max_position_embeddings", 4096)))
        from ...builder.model_identity import chat_info
        from ...runtime.chat_template import ChatTemplate

        problem = template_problem(ChatTemplate(chat_info(job.source.path, ())))
        if settings.modelfile and not problem:
            write_modelfile(job.out_dir, GGUF_NAME, default_total)
        return self._result(job, settings, header.type_counts(), out.stat().st_size, problem)

    @staticmethod
    def _result(job: ExportJob, settings: GgufSettings, types: dict[str, int], size: int, problem: str) -> ExportResult:
        config = job.source.config
        shape = ModelShape.of(config)
        max_total = int(config.get("max_position_embeddings", job.default_total_tokens))
        if size <= 0:
            raise BuildError(f"{job.fmt.name}: the GGUF writer wrote no weights")
        kv_values = 2 * shape.layers * shape.kv_heads * shape.head_dim
        modelfile = settings.modelfile and not problem
        return ExportResult(
            quantization={"method": f"GGUF {settings.quant_type} ("
                                    f"{'gguf-py reference quantizers' if settings.streamed else 'llama.cpp quantize'})",
                          **asdict(settings), "tensor_types": types},
            max_total_tokens=max_total,
            max_prompt_tokens=max_total - 1,
            kv_cache_bytes_per_token=int(kv_values * _KV_BYTES[settings.kv_cache_type]),
            kv_cache_dtype={"f16": "float16", "q8_0": "q8_0"}[settings.kv_cache_type],
            weight_bytes=size,
            runtime_overhead_bytes=RUNTIME_OVERHEAD_BYTES,
            details={"gguf": GGUF_NAME, "kv_cache_type": settings.kv_cache_type, "n_batch": settings.batch_size,
                     "modelfile": "Modelfile" if modelfile else "",
                     **({"modelfile_skipped": problem} if settings.modelfile and problem else {}),
                     "rope": (f"llama.cpp picks the LongRoPE factors by the allocated context: short up to "
                              f"{original_context(config)} tokens (as transformers), long above for every position"),
                     "writer": "edgeslm streaming (gguf-py)"},
            packages={name: version_of(name) or "not installed" for name in ("gguf", "numpy", "llama-cpp-python")},
        )


# llama.cpp's compute buffers (n_batch 512), the Python process and the tokenizer tables: peak RSS of the full-size
# artifact through edgeslm.load was weights + KV cache + 0.11-0.12 GiB at contexts 512/2048/4096 (docs/benchmarks.md,
# "GGUF"); twice that is planned
RUNTIME_OVERHEAD_BYTES = 256 * 2**20

EXPORTER = GgufExporter()
