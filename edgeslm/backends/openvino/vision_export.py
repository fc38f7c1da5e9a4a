"""Build a Phi-3.5-vision ``openvino-int4`` artifact: the file set openvino-genai's ``VLMPipeline`` loads.

Files (names and I/O as ``visual_language/phi3_vision`` and optimum-intel's phi3_v export have them):

* ``openvino_language_model.xml`` -- the stateful int4 decoder on ``inputs_embeds`` (``language_model_ir``);
* ``openvino_text_embeddings_model.xml`` -- ``input_ids`` -> ``inputs_embeds``, the token table in int8_sym;
* ``openvino_vision_embeddings_model.xml`` -- ``pixel_values`` -> ``last_hidden_state`` (CLIP up to the
  feature layer, class token dropped; padded to 1024 features when narrower: ``vision_modules``);
* ``openvino_vision_projection_model.xml`` -- merged tokens [1, L, 4096] -> [1, L, hidden];
* ``openvino_tokenizer.xml`` / ``openvino_detokenizer.xml`` + the Hugging Face tokenizer files;
* ``config.json`` (the checkpoint's, plus ``sub_GN`` / ``glb_GN`` in the pipeline's 4096 layout),
  ``preprocessor_config.json`` (``num_crops`` = the recipe's), ``generation_config.json``.

Our own torch modules are converted with ``openvino.convert_model`` (no checkpoint code runs) in a
spawned child, so torch's memory goes back before the decoder is converted; NNCF compresses the vision
parts' linear layers to int8 (``vision_precision = "int8"``) or leaves them in f16 (``"float16"``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from ...builder.exporter import ExportJob, ExportResult, converter_errors
from ...builder.phi3v_config import TOKENS_PER_CROP, parse_config
from ...errors import BuildError
from ...model_shape import ModelShape
from ...package_versions import version_of
from ...progress import Progress
from .settings import OpenVinoSettings

VISION_EMBEDDINGS = "openvino_vision_embeddings_model.xml"
VISION_PROJECTION = "openvino_vision_projection_model.xml"
TEXT_EMBEDDINGS = "openvino_text_embeddings_model.xml"
VISION_FILES = (VISION_EMBEDDINGS, VISION_PROJECTION)
PREPROCESSING = "openvino-genai VLMPipeline (square crop grids); edgeslm.vision.phi3v_processor (others)"


def _output_to(log_path: str) -> None:
    """In a child process: everything it prints (NNCF's tables and bars, torch warnings) goes to the log."""
    import os

    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def tokenizer_view(source: Path, view: Path) -> Path:
    """A folder transformers' AutoTokenizer reads as a Phi-3 text model (it does not know ``phi3_v``): the
    text config and links to the tokenizer files."""
    from ...builder.phi3v_config import text_config

    view.mkdir(parents=True, exist_ok=True)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    (view / "config.json").write_text(json.dumps(text_config(config)), encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                 "added_tokens.json", "generation_config.json"):
        if (source / name).is_file() and not (view / name).exists():
            (view / name).symlink_to((source / name).resolve())
    return view


def convert_vision_parts(source_dir: str, out_dir: str, precision: str, log_path: str = "") -> dict[str, Any]:
    """In a child: the three embedding/vision IRs and the separators; returns what NNCF compressed."""
    if log_path:
        _output_to(log_path)
    import nncf
    import openvino as ov
    import torch

    from .vision_modules import GENAI_CLIP_WIDTH, GENAI_PATCHES, build_text_embeddings, build_vision_modules

    torch.set_num_threads(max(1, torch.get_num_threads()))
    source, out = Path(source_dir), Path(out_dir)
    vision = parse_config(json.loads((source / "config.json").read_text(encoding="utf-8")))
    embeddings, projection, sub_gn, glb_gn = build_vision_modules(source, vision)
    done: dict[str, Any] = {}
    with torch.inference_mode():
        vision_ir = ov.convert_model(embeddings, example_input=torch.zeros(1, 3, 336, 336),
                                     input=[ov.PartialShape([-1, 3, 336, 336])])
        merged = torch.zeros(1, 2 * TOKENS_PER_CROP, 4 * GENAI_CLIP_WIDTH)
        projection_ir = ov.convert_model(projection, example_input=merged, input=[ov.PartialShape([-1, -1, 4096])])
    del embeddings, projection
    _name(vision_ir, "pixel_values", "last_hidden_state")
    _name(projection_ir, "input", "last_hidden_state")
    for name, model in ((VISION_EMBEDDINGS, vision_ir), (VISION_PROJECTION, projection_ir)):
        if precision == "int8":
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        ov.save_model(model, str(out / name), compress_to_fp16=True)
        done[name] = precision
    del vision_ir, projection_ir
    table = build_text_embeddings(source)
    with torch.inference_mode():
        text_ir = ov.convert_model(table, example_input=torch.zeros(1, 4, dtype=torch.int64),
                                   input=[(ov.PartialShape([-1, -1]), ov.Type.i64)])
    del table
    _name(text_ir, "input_ids", "inputs_embeds")
    text_ir = nncf.compress_weights(text_ir, mode=nncf.CompressWeightsMode.INT8_SYM)
    ov.save_model(text_ir, str(out / TEXT_EMBEDDINGS), compress_to_fp16=True)
    done[TEXT_EMBEDDINGS] = "int8_sym"
    config = dict(vision.raw)
    config["sub_GN"] = [[[sub_gn]]]
    config["glb_GN"] = [[glb_gn]]
    (out / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    done["patches"] = GENAI_PATCHES
    return done


def _name(model, input_name: str, output_name: str) -> None:
    model.inputs[0].get_tensor().set_names({input_name})
    model.outputs[0].get_tensor().set_names({output_name})


def write_preprocessor_config(source: Path, out_dir: Path, num_crops: int) -> None:
    path = source / "preprocessor_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config.update({"num_crops": num_crops, "num_img_tokens": TOKENS_PER_CROP,
                   "image_processor_type": "Phi3VImageProcessor", "processor_class": "Phi3VProcessor"})
    config.setdefault("image_mean", [0.48145466, 0.4578275, 0.40821073])
    config.setdefault("image_std", [0.26862954, 0.26130258, 0.27577711])
    (out_dir / "preprocessor_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def export_vision_artifact(job: ExportJob, progress: Progress, log_path: Path) -> dict[str, Any]:
    """Write every file of the artifact except the tokenizer's; returns the route's manifest details."""
    from .language_model_ir import convert_language_model, in_child, stream_onnx_on_embeds

    settings: OpenVinoSettings = job.settings
    source, out = job.source.path, job.out_dir
    onnx_dir = job.work_dir / f"{job.fmt.name}-onnx"
    started = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        with progress.task(f"{job.fmt.name}: vision and embedding IRs (torch -> openvino.convert_model, "
                           f"{settings.vision_precision})"), \
                converter_errors(job.fmt.name, "openvino.convert_model of the vision parts", log_path):
            parts = in_child(convert_vision_parts, str(source), str(out), settings.vision_precision, str(log_path))
        log.write(f"{time.perf_counter() - started:8.1f}s vision parts: {parts}\n")
        with progress.task(f"{job.fmt.name}: stream, quantize and write the int4 decoder on inputs_embeds",
                           total=1.0) as advance, \
                converter_errors(job.fmt.name, "the streaming ONNX exporter", log_path):
            def written(name: str, done: int, total: int) -> None:
                log.write(f"{time.perf_counter() - started:8.1f}s {done:5d}/{total} {name}\n")
                advance(1 / total)

            onnx_path = stream_onnx_on_embeds(source, onnx_dir, job.source.config, settings.group_size, written)
        log.flush()
        with progress.task(f"{job.fmt.name}: convert the language model to OpenVINO IR (stateful, i4/i8)"), \
                converter_errors(job.fmt.name, "openvino.convert_model", log_path):
            ir = in_child(convert_language_model, onnx_path, out, True)
        log.write(f"{time.perf_counter() - started:8.1f}s language model: {ir}\n")
    shutil.rmtree(onnx_dir, ignore_errors=True)
    write_preprocessor_config(source, out, settings.num_crops)
    missing = [n for n in (VISION_EMBEDDINGS, VISION_PROJECTION, TEXT_EMBEDDINGS, "openvino_language_model.xml")
               if not (out / n).is_file()]
    if missing:
        raise BuildError(f"{job.fmt.name}: the vision export wrote no {', '.join(missing)}")
    return {"exporter": "onnx-streaming decoder on inputs_embeds + torch modules via openvino.convert_model",
            "pipeline": "openvino_genai.VLMPipeline (phi3_v)",
            "conversion": {"attention_rebuilt": ir.attention_replaced, "int4_weights": ir.int4_weights,
                           "int8_weights": ir.int8_weights, "kv_states": ir.kv_states,
                           "vision_parts": {k: v for k, v in parts.items() if k.endswith(".xml")}}}


def ir_bytes(out_dir: Path, names) -> int:
    return sum((out_dir / n).with_suffix(".bin").stat().st_size + (out_dir / n).stat().st_size for n in names)


def vision_info(job: ExportJob, settings: OpenVinoSettings):
    """The manifest's image facts; the crop and token rules are the pipeline's (the same HD rule)."""
    from ...bundle.manifest import VisionInfo
    from ...vision.phi3v_processor import tokens_per_crop_grid

    vision = parse_config(job.source.config)
    clip = vision.vision_config
    crops, positions = settings.num_crops + 1, 577
    width, inner, heads = int(clip["hidden_size"]), int(clip["intermediate_size"]), int(clip["num_attention_heads"])
    activations = 4 * crops * positions * (2 * inner + heads * positions + 4 * max(width, 1024))
    return VisionInfo(
        num_crops=settings.num_crops, tokens_per_crop=TOKENS_PER_CROP,
        tokens_per_image={str(n): max(tokens_per_crop_grid(n).values()) for n in (1, 2, 4, 8, 16)},
        tokens_by_grid=tokens_per_crop_grid(settings.num_crops),
        vision_weight_bytes=ir_bytes(job.out_dir, VISION_FILES),
        vision_runtime_bytes=int(activations + 4 * crops * 3 * 336 * 336),
        precision=settings.vision_precision, preprocessing=PREPROCESSING)


def vision_result(job: ExportJob, settings: OpenVinoSettings, details: dict[str, Any], method: str,
                  base: ExportResult) -> ExportResult:
    """``base`` (the text artifact's result shape) with the language model's files, KV size and images."""
    import dataclasses

    from .ir_inspection import weight_compression_stats

    quantization = dict(base.quantization)
    quantization["ir_weights"] = weight_compression_stats(job.out_dir / "openvino_language_model.xml")
    quantization["text_embeddings_ir_weights"] = weight_compression_stats(job.out_dir / TEXT_EMBEDDINGS)
    quantization["vision_ir_weights"] = {n: weight_compression_stats(job.out_dir / n) for n in VISION_FILES}
    quantization["method"] = method
    weight = ir_bytes(job.out_dir, ("openvino_language_model.xml", TEXT_EMBEDDINGS, *VISION_FILES))
    return dataclasses.replace(
        base, quantization=quantization, weight_bytes=weight,
        kv_cache_bytes_per_token=ModelShape.of(job.source.config).kv_cache_bytes_per_token(2),
        details={**base.details, **details, "model_xml": "openvino_language_model.xml"},
        packages={**base.packages, "nncf": version_of("nncf") or "not installed",
                  "torch": version_of("torch") or "not installed"},
        vision=vision_info(job, settings))
