"""Build side of the QNN format: the decoder in parts → static graphs → streamed calibration → QDQ →
per-SoC HTP context binaries, one part at a time (so memory does not grow with the number of layers).

Per part (``part_plan.py``): its weights read from the memory-mapped checkpoint (only that part's
tensors), static prefill and decode graphs exported in float32, calibrated by ``streamed_calibration``
(the residual stream on disk, running min/max), QDQ-quantized (w4a16 by default, 8-bit LM head),
compiled for every SoC, and its float graphs deleted before the next part starts.

Artifact layout (``artifacts/qnn-context/``):
  qnn_config.json              graph I/O, parts (layers), context length, prefill chunk, per-SoC files, versions
  embeddings.npy               token embeddings [vocab, hidden] float16 (looked up on the CPU)
  rope.npz                     cos/sin tables [context, head_dim] (LongRoPE short factors)
  <SOC>/partN_prefill_ctx.onnx EPContext model + partN_prefill_ctx_qnn.bin, compiled for that SoC
  <SOC>/partN_decode_ctx.onnx  EPContext model + partN_decode_ctx_qnn.bin
  qdq/partN_prefill.onnx, qdq/partN_decode.onnx   portable QDQ graphs (ship_qdq_graphs)
  tokenizer.json, tokenizer_config.json
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ...builder.captured_output import captured_output
from ...builder.exporter import ExportJob, ExportResult, converter_errors, require_modules
from ...builder.phi3v_config import is_vision_checkpoint
from ...builder.source import SourceModel
from ...config.strict import to_plain
from ...errors import BuildError, UsageError
from ...model_shape import ModelShape
from ...package_versions import version_of
from ...progress import Progress
from . import ep_sessions, qai_hub_compiler
from .kv_cache_loop import MASK_VALUE
from .part_plan import GRAPHS, DecoderPart, plan_parts
from .part_weights import embedding_table, part_tensors
from .qdq_quantization import quantize_graph
from .rope_tables import rope_tables
from .settings import QnnSettings
from .static_decoder import build_module, export_graph
from .vision_build import VisionBuild, build_vision, vision_info
from .vision_calibration import image_prompt


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
        if float(cfg.get("partial_rotary_factor", 1.0)) != 1.0 or cfg.get("model_type") not in ("phi3", "phi3_v"):
            raise UsageError("qnn-context supports Phi-3 decoders with full rotary embeddings only")
        if settings.context_length > int(cfg.get("original_max_position_embeddings") or 4096):
            raise UsageError(f"qnn-context.context_length {settings.context_length} exceeds the model's "
                             f"original_max_position_embeddings")
        try:
            compile_for = settings.socs_for(job.target_socs)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        calibration_ids = self._calibration_ids(job, settings)
        if len(calibration_ids) < settings.calibration_sequences:
            length = len(calibration_ids[0]) if calibration_ids else 0
            raise UsageError(f"the calibration text {job.calibration.label} ({job.calibration.origin}) holds "
                             f"{len(calibration_ids)} sequence(s) of {length} tokens; qnn-context needs "
                             f"calibration_sequences = {settings.calibration_sequences}",
                             hint="give a longer [[calibration_text]] or lower qnn-context.calibration_sequences")
        shape = _shape(cfg)
        parts = plan_parts(cfg, settings.part_layers, settings.part_budget_mb * 1_000_000)
        log_path = job.work_dir / f"{job.fmt.name}-export.log"
        float_dir, qdq_dir = job.work_dir / "float", (job.out_dir if settings.ship_qdq_graphs else job.work_dir) / "qdq"
        float_dir.mkdir(), qdq_dir.mkdir()
        for name in compile_for:
            (job.out_dir / name).mkdir()
        embeddings = embedding_table(job.source.path, job.source.config).astype(np.float16)
        np.save(job.out_dir / "embeddings.npy", embeddings)
        cos, sin = rope_tables(cfg, settings.context_length)
        np.savez(job.out_dir / "rope.npz", cos=cos, sin=sin)
        from .streamed_calibration import embed_steps, plan_steps, residual_store

        socs = {name: {"soc_model": soc.soc_model, "htp_arch": soc.htp_arch, "device_ids": list(soc.device_ids),
                       "npu_memory_mb": soc.npu_memory_mb, "parts": []} for name, soc in compile_for.items()}
        part_entries, timings = [], []
        vision, image_rows = None, {}
        if is_vision_checkpoint(cfg):
            vision = self._build_vision(job, settings, compile_for, float_dir, qdq_dir, log_path, progress)
            timings.append(vision.timing)
            for name, file in vision.soc_files.items():
                socs[name]["vision"] = file
            image_rows, image_prompts = self._image_sequences(job, settings, vision, embeddings, calibration_ids)
        else:
            image_prompts = {}
        steps = plan_steps(calibration_ids, settings.prefill_chunk, image_prompts)
        store = residual_store(job.work_dir / "residual-0.npy", steps, settings.prefill_chunk, shape["hidden_size"])
        embed_steps(store, steps, embeddings, image_rows)
        for part in parts:
            label = f"{job.fmt.name}: part {part.index + 1}/{len(parts)} (layers {part.start}-{part.stop - 1})"
            timing: dict[str, Any] = {"part": part.index, "layers": [part.start, part.stop]}
            started = time.monotonic()
            with progress.task(f"{label}: static prefill ({settings.prefill_chunk}) and decode graphs, "
                               f"context {settings.context_length}"):
                with converter_errors(job.fmt.name, f"static graph export of {label}", log_path), \
                        captured_output(log_path):
                    self._export_part(job, settings, part, float_dir)
            timing["export_s"] = round(time.monotonic() - started, 1)
            started = time.monotonic()
            with progress.task(f"{label}: streamed calibration and QDQ (16-bit activations, {settings.weight_bits}-bit "
                               f"weights, {settings.lm_head_bits}-bit LM head)"):
                with converter_errors(job.fmt.name, f"calibration / QDQ quantization of {label}", log_path), \
                        captured_output(log_path):
                    store = self._quantize_part(job, settings, part, steps, store, float_dir, qdq_dir, cos, sin, shape)
            timing["calibrate_qdq_s"] = round(time.monotonic() - started, 1)
            started = time.monotonic()
            for name, soc in compile_for.items():
                with progress.task(f"{label}: compile HTP context binaries for {name} (soc_model {soc.soc_model}, "
                                   f"v{soc.htp_arch}) with {settings.compiler}"):
                    with converter_errors(job.fmt.name, f"context binary compilation of {label} for {name}",
                                          log_path), captured_output(log_path):
                        socs[name]["parts"].append(self._compile_part(qdq_dir, job.out_dir, part, name, soc, settings,
                                                                      socs[name]))
            timing["compile_s"] = round(time.monotonic() - started, 1)
            timings.append(timing)
            part_entries.append({"layers": [part.start, part.stop], "input": part.input_name,
                                 "output": "logits" if part.last else "hidden_states_out"})
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (job.source.path / name).is_file():
                shutil.copy2(job.source.path / name, job.out_dir / name)
        for name, entry in socs.items():
            entry["files"] = sorted(str(p.relative_to(job.out_dir)) for p in (job.out_dir / name).iterdir())
        versions = ep_sessions.qnn_versions()
        qdq = {"parts": [{g: f"qdq/{p.graph_name(g)}.onnx" for g in GRAPHS} for p in parts]} \
            if settings.ship_qdq_graphs else {}
        qnn_config = {"graphs": {"prefill_tokens": settings.prefill_chunk, "decode_tokens": 1},
                      "context_length": settings.context_length, "mask_value": MASK_VALUE, **shape,
                      "parts": part_entries, "socs": socs, "qdq": qdq, "compiled_with": versions,
                      **({"vision": vision.config} if vision else {})}
        (job.out_dir / "qnn_config.json").write_text(json.dumps(qnn_config, indent=2) + "\n", encoding="utf-8")
        needs = _part_needs(job.out_dir, parts, socs, shape, settings)
        first = next(iter(socs.values()))
        device_bytes = (job.out_dir / "embeddings.npy").stat().st_size + sum(
            (job.out_dir / f).stat().st_size for f in first["files"])
        return ExportResult(
            quantization={"method": "QDQ static (onnxruntime QNN config), streamed MinMax calibration per part",
                          "activations": "uint16", "weights": f"int{settings.weight_bits} symmetric per-channel",
                          "lm_head": f"int{settings.lm_head_bits} symmetric per-channel",
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
                     "parts": needs, "stage_seconds": timings,
                     "device_context": {"npu": {"max_prompt_tokens": settings.context_length - 1,
                                                "max_total_tokens": settings.context_length}}},
            packages={name: version_of(name) or "not installed" for name in (
                "onnxruntime", "onnxruntime-qnn", "onnx", "torch", "qai-hub")},
            vision=vision_info(vision, job.out_dir, settings) if vision else None,
        )

    @staticmethod
    def _build_vision(job: ExportJob, settings: QnnSettings, compile_for: dict, float_dir: Path, qdq_dir: Path,
                      log_path: Path, progress: Progress) -> VisionBuild:
        crops = settings.num_crops + 1
        with progress.task(f"{job.fmt.name}: vision encoder [{crops}, 3, 336, 336] (a16w8), calibrated on "
                           f"{settings.vision_calibration_count} images, compiled for {', '.join(compile_for)}"):
            with converter_errors(job.fmt.name, "the vision encoder's export, calibration or context binary "
                                                "compilation", log_path), captured_output(log_path):
                return build_vision(job.source.path, settings, compile_for, job.out_dir, float_dir, qdq_dir,
                                    settings.ship_qdq_graphs)

    @staticmethod
    def _image_sequences(job: ExportJob, settings: QnnSettings, vision: VisionBuild, embeddings: np.ndarray,
                         calibration_ids: list[list[int]]) -> tuple[dict[int, np.ndarray], dict[int, int]]:
        """Append the image prompts of the calibration images ``build_vision`` picked for the decoder to
        ``calibration_ids`` (whole prompts: all image tokens at their real positions, then a few answer
        tokens); returns their embedding rows (image features in place) and prompt lengths by sequence index."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(job.source.path / "tokenizer.json"))
        rows, prompts = {}, {}
        for features in vision.calibration_features:
            ids, embedded, prompt_length = image_prompt(
                lambda text: tokenizer.encode(text, add_special_tokens=True).ids, features, embeddings)
            if len(ids) > settings.context_length:  # an image prompt longer than the graphs' context
                raise UsageError(f"a calibration image prompt has {len(ids)} tokens, more than qnn-context.context_length "
                                 f"{settings.context_length}", hint="lower qnn-context.num_crops or raise context_length")
            rows[len(calibration_ids)], prompts[len(calibration_ids)] = embedded, prompt_length
            calibration_ids.append(ids)
        return rows, prompts

    @staticmethod
    def _calibration_ids(job: ExportJob, settings: QnnSettings) -> list[list[int]]:
        """Token sequences of the build's calibration text (never the evaluation windows)."""
        length = min(2 * settings.prefill_chunk + settings.calibration_decode_steps, settings.context_length)
        return job.calibration.sequences(job.source.path / "tokenizer.json", settings.calibration_sequences, length)

    @staticmethod
    def _export_part(job: ExportJob, settings: QnnSettings, part: DecoderPart, float_dir: Path) -> None:
        """This part's float32 prefill and decode graphs, from only its tensors (memory-mapped reads)."""
        cfg = job.source.config
        module = build_module(part_tensors(job.source.path, part, cfg), cfg, part.layers, part.last)
        for graph, steps in (("prefill", settings.prefill_chunk), ("decode", 1)):
            export_graph(module, cfg, steps, settings.context_length, float_dir / f"{part.graph_name(graph)}.onnx",
                         part.layers, part.first, part.last)
        del module
        gc.collect()

    @staticmethod
    def _quantize_part(job: ExportJob, settings: QnnSettings, part: DecoderPart, steps: list, store: np.ndarray,
                       float_dir: Path, qdq_dir: Path, cos: np.ndarray, sin: np.ndarray, shape: dict) -> np.ndarray:
        """Calibrate and quantize this part's two graphs; returns the next part's residual store."""
        from .streamed_calibration import PartReader, residual_store

        out = None if part.last else residual_store(job.work_dir / f"residual-{part.index + 1}.npy", steps,
                                                    settings.prefill_chunk, shape["hidden_size"])
        kv_dir = job.work_dir / f"prompt-kv-{part.index}"
        kv_dir.mkdir()
        for graph in GRAPHS:
            float_model = float_dir / f"{part.graph_name(graph)}.onnx"
            session = ep_sessions.cpu_session(float_model, 2)
            reader = PartReader(session, part, steps, graph, store, out, cos, sin, settings.context_length,
                                shape["kv_heads"], shape["head_dim"], kv_dir)
            if len(reader) == 0:
                raise BuildError(f"the calibration plan has no {graph} step", hint="give a longer calibration text")
            quantize_graph(float_model, qdq_dir / f"{part.graph_name(graph)}.onnx", reader, settings.weight_bits,
                           settings.lm_head_bits)
            reader.finish()
            del reader, session
            float_model.unlink()
            gc.collect()
        shutil.rmtree(kv_dir, ignore_errors=True)
        if out is not None:
            out.flush()
        previous = Path(store.filename) if getattr(store, "filename", None) else None
        del store
        if previous is not None:
            previous.unlink(missing_ok=True)
        return out

    @staticmethod
    def _compile_part(qdq_dir: Path, out_dir: Path, part: DecoderPart, name: str, soc: Any, settings: QnnSettings,
                      entry: dict) -> dict[str, str]:
        files = {}
        for index, graph in enumerate(GRAPHS):
            source, target = qdq_dir / f"{part.graph_name(graph)}.onnx", out_dir / name / f"{part.graph_name(graph)}_ctx.onnx"
            if settings.compiler == "qai-hub":
                entry.setdefault("qai_hub_jobs", {})[part.graph_name(graph)] = qai_hub_compiler.compile_on_hub(
                    source, target, name, soc, profile=settings.qai_hub_profile)
            else:
                ep_sessions.compile_context(source, target, soc.soc_model, soc.htp_arch, share=settings.share_weights,
                                            last_shared=index == len(GRAPHS) - 1)
            files[graph] = f"{name}/{target.name}"
        return {"prefill": files["prefill"], "decode": files["decode"]}


def _part_needs(out_dir: Path, parts: list[DecoderPart], socs: dict, shape: dict, settings: QnnSettings) -> list[dict]:
    """What each part needs on the NPU: its compiled weights (the first SoC's binaries), its KV cache
    (16-bit on the NPU) and an estimate of its largest activations (the prefill graph's attention scores)."""
    first = next(iter(socs.values()))
    needs = []
    for part, files in zip(parts, first["parts"]):
        binaries = sum(p.stat().st_size for g in GRAPHS for p in (out_dir / files[g]).parent.glob(
            Path(files[g]).stem + "*") if p.is_file())
        kv = 2 * len(part.layers) * shape["kv_heads"] * settings.context_length * shape["head_dim"] * 2
        heads = shape["hidden_size"] // shape["head_dim"]
        activations = 2 * settings.prefill_chunk * (heads * (settings.context_length + settings.prefill_chunk)
                                                    + 4 * shape["hidden_size"]) * 2
        needs.append({"layers": [part.start, part.stop], "weight_bytes": binaries, "kv_cache_bytes": kv,
                      "activation_bytes": activations})
    return needs


def _shape(cfg: dict[str, Any]) -> dict[str, int]:
    shape = ModelShape.of(cfg)
    return {"layers": shape.layers, "kv_heads": shape.kv_heads, "head_dim": shape.head_dim,
            "hidden_size": shape.hidden_size, "vocab_size": shape.vocab_size}


EXPORTER = QnnExporter()
