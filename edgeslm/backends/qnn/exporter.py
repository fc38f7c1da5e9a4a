"""Build side of the QNN format: static graphs → QDQ (calibrated) → per-SoC HTP context binaries.

Artifact layout (``artifacts/qnn-context/``):
  qnn_config.json           graph I/O, context length, prefill chunk, per-SoC files, versions
  embeddings.npy            token embeddings [vocab, hidden] float16 (looked up on the CPU)
  rope.npz                  cos/sin tables [context, head_dim] (LongRoPE short factors)
  <SOC>/prefill_ctx.onnx    EPContext model + prefill_ctx_qnn.bin, compiled for that SoC
  <SOC>/decode_ctx.onnx     EPContext model + decode_ctx_qnn.bin
  qdq/prefill.onnx, qdq/decode.onnx   portable QDQ graphs (ship_qdq_graphs)
  tokenizer.json, tokenizer_config.json
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ...builder.captured_output import captured_output
from ...builder.exporter import ExportJob, ExportResult, converter_errors, require_modules
from ...builder.source import SourceModel
from ...config.strict import to_plain
from ...errors import UsageError
from ...model_shape import ModelShape
from ...package_versions import version_of
from ...progress import Progress
from . import ep_sessions, qai_hub_compiler
from .kv_cache_loop import MASK_VALUE, KvCacheLoop
from .qdq_quantization import quantize_graph
from .rope_tables import rope_tables
from .settings import QnnSettings
from .static_decoder import build_module, export_graph

GRAPHS = ("prefill", "decode")


class QnnExporter:
    modules = ("onnxruntime", "onnxruntime_qnn", "onnx", "torch", "safetensors", "tokenizers")

    def check_available(self) -> None:
        require_modules(self.modules, "the QNN exporter", "build-qnn")

    def check_settings(self, settings: QnnSettings, source: SourceModel) -> None:
        if settings.compiler == "qai-hub":
            qai_hub_compiler.check_ready()

    def estimate_output_bytes(self, source: SourceModel, settings: QnnSettings) -> int:
        per_weight = settings.weight_bits / 8
        copies = len(settings.socs) * (1 if settings.share_weights else 2) + (2 if settings.ship_qdq_graphs else 0)
        return int(source.parameter_count * per_weight * copies + 64 * 2**20)

    def export(self, job: ExportJob, progress: Progress) -> ExportResult:
        settings: QnnSettings = job.settings
        self.check_available()
        self.check_settings(settings, job.source)
        cfg = job.source.config
        if float(cfg.get("partial_rotary_factor", 1.0)) != 1.0 or cfg.get("model_type") != "phi3":
            raise UsageError("qnn-context supports Phi-3 decoders with full rotary embeddings only")
        if settings.context_length > int(cfg.get("original_max_position_embeddings") or 4096):
            raise UsageError(f"qnn-context.context_length {settings.context_length} exceeds the model's "
                             f"original_max_position_embeddings")
        try:
            compile_for = settings.socs_for(job.target_socs)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        calibration_ids = self._calibration_ids(job, settings)
        shape = _shape(cfg)
        log_path = job.work_dir / f"{job.fmt.name}-export.log"
        float_dir, qdq_dir = job.work_dir / "float", (job.out_dir if settings.ship_qdq_graphs else job.work_dir) / "qdq"
        float_dir.mkdir(), qdq_dir.mkdir()
        with progress.task(f"{job.fmt.name}: static prefill ({settings.prefill_chunk}) and decode graphs, "
                           f"context {settings.context_length}"):
            with converter_errors(job.fmt.name, "static graph export", log_path), captured_output(log_path):
                embeddings = self._export_float(job, settings, float_dir)
        cos, sin = rope_tables(cfg, settings.context_length)
        np.save(job.out_dir / "embeddings.npy", embeddings.astype(np.float16))
        np.savez(job.out_dir / "rope.npz", cos=cos, sin=sin)
        with progress.task(f"{job.fmt.name}: calibration on {len(calibration_ids)} text sequences"):
            feeds = self._calibration_feeds(float_dir, embeddings, cos, sin, shape, settings, calibration_ids)
        with progress.task(f"{job.fmt.name}: QDQ quantization (16-bit activations, {settings.weight_bits}-bit "
                           "per-channel weights)"):
            with converter_errors(job.fmt.name, "QDQ quantization", log_path), captured_output(log_path):
                for graph in GRAPHS:
                    quantize_graph(float_dir / f"{graph}.onnx", qdq_dir / f"{graph}.onnx", feeds[graph],
                                   settings.weight_bits)
        del feeds
        socs = {}
        for name, soc in compile_for.items():
            with progress.task(f"{job.fmt.name}: compile HTP context binaries for {name} "
                               f"(soc_model {soc.soc_model}, v{soc.htp_arch}) with {settings.compiler}"):
                with converter_errors(job.fmt.name, f"context binary compilation for {name}", log_path), \
                        captured_output(log_path):
                    socs[name] = self._compile(qdq_dir, job.out_dir / name, name, soc, settings)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (job.source.path / name).is_file():
                shutil.copy2(job.source.path / name, job.out_dir / name)
        versions = ep_sessions.qnn_versions()
        qnn_config = {"graphs": {"prefill_tokens": settings.prefill_chunk, "decode_tokens": 1},
                      "context_length": settings.context_length, "mask_value": MASK_VALUE, **shape,
                      "socs": socs, "qdq": {g: f"qdq/{g}.onnx" for g in GRAPHS} if settings.ship_qdq_graphs else {},
                      "compiled_with": versions}
        (job.out_dir / "qnn_config.json").write_text(json.dumps(qnn_config, indent=2) + "\n", encoding="utf-8")
        first = next(iter(socs.values()))
        device_bytes = (job.out_dir / "embeddings.npy").stat().st_size + sum(
            (job.out_dir / f).stat().st_size for f in first["files"])
        return ExportResult(
            quantization={"method": "QDQ static (onnxruntime QNN config), MinMax calibration",
                          "activations": "uint16", "weights": f"int{settings.weight_bits} symmetric per-channel",
                          "calibration_text": job.calibration.label, "calibration_origin": job.calibration.origin,
                          "calibration_tokens": int(sum(len(s) for s in calibration_ids)),
                          **to_plain(settings)},
            max_total_tokens=settings.context_length,
            max_prompt_tokens=settings.context_length - 1,
            kv_cache_bytes_per_token=ModelShape.of(job.source.config).kv_cache_bytes_per_token(4),
            kv_cache_dtype="float32 (host buffers; 16-bit on the NPU)",
            weight_bytes=device_bytes,
            runtime_overhead_bytes=300 * 2**20,
            details={"qnn_sdk_version": versions.get("qnn_sdk", ""),
                     "onnxruntime_qnn_version": versions.get("onnxruntime_qnn", ""),
                     "compiler": settings.compiler, "context_length": settings.context_length,
                     "prefill_chunk": settings.prefill_chunk, "socs": socs, "weights_shared": settings.share_weights,
                     "device_context": {"npu": {"max_prompt_tokens": settings.context_length - 1,
                                                "max_total_tokens": settings.context_length}}},
            packages={name: version_of(name) or "not installed" for name in (
                "onnxruntime", "onnxruntime-qnn", "onnx", "torch", "qai-hub")},
        )

    @staticmethod
    def _calibration_ids(job: ExportJob, settings: QnnSettings) -> list[list[int]]:
        """Token sequences of the build's calibration text (never the evaluation windows)."""
        length = min(2 * settings.prefill_chunk + settings.calibration_decode_steps, settings.context_length)
        return job.calibration.sequences(job.source.path / "tokenizer.json", settings.calibration_sequences, length)

    @staticmethod
    def _export_float(job: ExportJob, settings: QnnSettings, float_dir: Path) -> np.ndarray:
        from safetensors.torch import load_file

        tensors: dict[str, Any] = {}
        for path in sorted(job.source.path.glob("*.safetensors")):
            tensors.update(load_file(str(path)))
        module = build_module(tensors, job.source.config)
        embeddings = tensors["model.embed_tokens.weight"].float().numpy()
        del tensors
        for graph, steps in (("prefill", settings.prefill_chunk), ("decode", 1)):
            export_graph(module, job.source.config, steps, settings.context_length, float_dir / f"{graph}.onnx")
        return embeddings

    @staticmethod
    def _calibration_feeds(float_dir: Path, embeddings: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                           shape: dict[str, int], settings: QnnSettings, sequences: list[list[int]]) -> dict:
        record: dict[str, list] = {"prefill": [], "decode": []}
        loop = KvCacheLoop(ep_sessions.runner(ep_sessions.cpu_session(float_dir / "prefill.onnx", 2)),
                           ep_sessions.runner(ep_sessions.cpu_session(float_dir / "decode.onnx", 2)),
                           embeddings, cos, sin, shape["layers"], shape["kv_heads"], shape["head_dim"],
                           settings.context_length, settings.prefill_chunk, record=record)
        for ids in sequences:
            loop.reset()
            prompt = ids[:min(2 * settings.prefill_chunk, len(ids))]
            loop.prefill(prompt)
            for token in ids[len(prompt):]:
                loop.decode(token)
        if not record["decode"]:  # sequences shorter than two chunks: decode once after each prompt
            for ids in sequences:
                loop.reset()
                loop.prefill(ids[:-1])
                loop.decode(ids[-1])
        return record

    @staticmethod
    def _compile(qdq_dir: Path, out_dir: Path, name: str, soc: Any, settings: QnnSettings) -> dict[str, Any]:
        out_dir.mkdir()
        hub_jobs = {}
        for index, graph in enumerate(GRAPHS):
            target = out_dir / f"{graph}_ctx.onnx"
            if settings.compiler == "qai-hub":
                hub_jobs[graph] = qai_hub_compiler.compile_on_hub(qdq_dir / f"{graph}.onnx", target, name, soc,
                                                                  profile=settings.qai_hub_profile)
            else:
                ep_sessions.compile_context(qdq_dir / f"{graph}.onnx", target, soc.soc_model, soc.htp_arch,
                                            share=settings.share_weights, last_shared=index == len(GRAPHS) - 1)
        files = sorted(str(p.relative_to(out_dir.parent)) for p in out_dir.iterdir())
        entry = {"soc_model": soc.soc_model, "htp_arch": soc.htp_arch, "device_ids": list(soc.device_ids),
                 "prefill": f"{name}/prefill_ctx.onnx", "decode": f"{name}/decode_ctx.onnx", "files": files}
        if hub_jobs:
            entry["qai_hub_jobs"] = hub_jobs
        return entry


def _shape(cfg: dict[str, Any]) -> dict[str, int]:
    shape = ModelShape.of(cfg)
    return {"layers": shape.layers, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim,
            "hidden_size": shape.hidden_size, "vocab_size": shape.vocab_size}


EXPORTER = QnnExporter()
