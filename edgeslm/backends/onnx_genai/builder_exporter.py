"""The ``ort-builder`` exporter of the ONNX formats: onnxruntime-genai's model builder, called as a library.

It loads the whole model with transformers (23 GB of RAM for the 3.8B Phi-3.5-mini) and needs torch;
edgeslm's default is the streaming exporter (``exporter.py``). This one stays for other architectures
and for the benchmark that compares both.

The builder writes ``model.onnx`` (+ ``model.onnx.data``), ``genai_config.json`` and the tokenizer
files. We then make its defaults safe for small devices: ``search.max_length`` becomes the planned
context instead of the model's 131072 (which, with the shared KV buffer, would allocate tens of GB).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...builder.captured_output import captured_output
from ...builder.exporter import ExportJob, ExportResult, converter_errors, require_modules
from ...builder.source import SourceModel
from ...model_shape import ModelShape
from ...package_versions import version_of
from ...progress import Progress
from .settings import OnnxSettings

_DTYPE_BYTES = {1: 4, 10: 2, 16: 2}  # onnx TensorProto: FLOAT, FLOAT16, BFLOAT16
_DTYPE_NAMES = {1: "float32", 10: "float16", 16: "bfloat16"}


class OrtBuilderExporter:
    packages = ("onnxruntime_genai", "onnx", "onnx_ir", "torch", "transformers")

    def check_available(self) -> None:
        require_modules(self.packages, "onnxruntime-genai's model builder", "build-onnx-builder")

    def check_settings(self, settings: OnnxSettings, source: SourceModel) -> None:
        return None  # every combination of the typed settings is valid for the builder

    def estimate_output_bytes(self, source: SourceModel, settings: OnnxSettings) -> int:
        cfg = source.config
        embed = int(cfg.get("vocab_size", 0)) * int(cfg.get("hidden_size", 0))
        per_weight = 0.6 if settings.precision == "int4" else 1.1
        # fp32 embeddings + quantized matmuls + LongRoPE cos/sin caches and graph
        return int(embed * 4 + max(source.parameter_count - embed, 0) * per_weight + 64 * 2**20)

    def export(self, job: ExportJob, progress: Progress) -> ExportResult:
        settings: OnnxSettings = job.settings
        self.check_available()
        options = [
            f"block_size={settings.block_size}",
            f"accuracy_level={settings.accuracy_level}",
            f"algo_config={settings.algorithm}",
            f"is_symmetric={'true' if settings.symmetric else 'false'}",
            "hf_token=false",
        ]
        if not settings.quantize_lm_head:
            options.append("nodes_to_exclude=/lm_head/MatMul")
        src = str(job.source.path)
        log_path = job.work_dir / f"{job.fmt.name}-builder.log"
        with progress.task(f"{job.fmt.name}: export and quantize (onnxruntime-genai builder, whole model in memory)"):
            with converter_errors(job.fmt.name, "the onnxruntime-genai builder", log_path), \
                    captured_output(log_path):
                from onnxruntime_genai.models import builder

                extra = builder.parse_extra_options(src, src, str(job.out_dir), settings.precision,
                                                    settings.execution_provider, str(job.work_dir / "hf-cache"),
                                                    options)
                builder.create_model(src, src, str(job.out_dir), settings.precision,
                                     settings.execution_provider, str(job.work_dir / "hf-cache"), **extra)
        max_total = int(job.source.config.get("max_position_embeddings", job.default_total_tokens))
        default_total = min(job.default_total_tokens, max_total)
        self._tune_genai_config(job.out_dir / "genai_config.json", default_total)
        kv_dtype, kv_bytes = self._kv_cache(job.out_dir / "model.onnx", job.source.config)
        weight_bytes = sum(p.stat().st_size for p in job.out_dir.glob("model.onnx*"))
        return ExportResult(
            quantization={"method": "MatMulNBits weight-only", **asdict(settings),
                          "embedding": "float16" if settings.execution_provider == "cuda" else "float32"},
            max_total_tokens=max_total,
            max_prompt_tokens=max_total - 1,
            kv_cache_bytes_per_token=kv_bytes,
            kv_cache_dtype=kv_dtype,
            weight_bytes=weight_bytes,
            runtime_overhead_bytes=300 * 2**20,
            details={"genai_config": "genai_config.json", "execution_provider": settings.execution_provider},
            packages={name: version_of(name) or "not installed" for name in ("onnxruntime-genai", "onnxruntime", "onnx", "torch",
                                                         "transformers")},
        )

    @staticmethod
    def _tune_genai_config(path: Path, default_total: int) -> None:
        config = json.loads(path.read_text(encoding="utf-8"))
        config["search"]["max_length"] = default_total
        path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")

    @staticmethod
    def _kv_cache(model_path: Path, hf_config: dict[str, Any]) -> tuple[str, int]:
        import onnx

        model = onnx.load(str(model_path), load_external_data=False)
        elem = next((i.type.tensor_type.elem_type for i in model.graph.input if i.name.startswith("past_key")), 1)
        return _DTYPE_NAMES.get(elem, str(elem)), ModelShape.of(hf_config).kv_cache_bytes_per_token(
            _DTYPE_BYTES.get(elem, 4))

