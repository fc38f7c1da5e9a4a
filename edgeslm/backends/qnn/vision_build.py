"""Build side of the QNN format's image part (Phi-3.5-vision): encoder graph → calibration → QDQ → binaries.

The vision encoder (``vision_encoder``: CLIP + 2x2 merge + projection at [num_crops + 1, 3, 336, 336])
is exported in float32 and compiled per SoC into its own EPContext model, either as it is with the HTP's
fp16 precision (``vision_precision = "float16"``, the default) or after QDQ (``"a16w8"``: calibrated on the
calibration images of ``vision_calibration``, 16-bit activations, per-channel int8 MatMul weights,
asymmetric uint8 norm and Conv weights). The float graph's image features of the
calibration images are handed back for the decoder's calibration (image prompts), before the decoder
parts are built. Files (``artifacts/qnn-context/``): ``vision_separators.npy`` (the projected newline and
``glb_GN``), ``<SOC>/vision_ctx.onnx`` + ``vision_ctx_qnn.bin``, ``qdq/vision.onnx`` (with ship_qdq_graphs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...builder.phi3v_config import load_config
from . import ep_sessions, qai_hub_compiler
from .qdq_quantization import quantize_graph
from .settings import QnnSettings
from .vision_calibration import PixelReader, calibration_pixels, folder_images, synthetic_images
from .vision_encoder import OUTPUT, export_vision_encoder
from .vision_layout import image_tokens

SEPARATORS = "vision_separators.npy"
GRAPH = "vision"


@dataclass
class VisionBuild:
    config: dict[str, Any]  # qnn_config["vision"]
    soc_files: dict[str, str]  # SoC -> its EPContext model (relative to the artifact)
    calibration_features: list[np.ndarray]  # [image tokens, hidden] (float graph) of the decoder's calibration images
    timing: dict[str, Any]
    clip: dict[str, int]  # widths for the activation estimate


def build_vision(source: Path, settings: QnnSettings, compile_for: dict, out_dir: Path, float_dir: Path,
                 qdq_dir: Path, shipped_qdq: bool) -> VisionBuild:
    vision = load_config(source)
    crops = settings.num_crops + 1
    timing: dict[str, Any] = {"part": "vision", "crops": crops}
    started = time.monotonic()
    float_model = float_dir / f"{GRAPH}.onnx"
    separators = export_vision_encoder(source, vision, crops, float_model)
    np.save(out_dir / SEPARATORS, separators.astype(np.float32))
    timing["export_s"] = round(time.monotonic() - started, 1)

    started = time.monotonic()
    quantized = settings.vision_precision == "a16w8"
    folder = settings.vision_calibration_images
    wanted = settings.vision_calibration_count if quantized else settings.calibration_sequences
    images = folder_images(Path(folder), wanted) if folder else synthetic_images(wanted)
    processed = calibration_pixels(images, settings.num_crops)
    run = ep_sessions.runner(ep_sessions.cpu_session(float_model, 2))
    count = min(settings.calibration_sequences, len(processed))  # image prompts for the decoder, evenly spread
    features = [image_tokens(run({"pixel_values": p.pixel_values[0]})[0], separators, *p.image_sizes[0].tolist(),
                             crops) for p in (processed[i * len(processed) // count] for i in range(count))]
    del run
    qdq_model = qdq_dir / f"{GRAPH}.onnx"  # the portable graph: QDQ (a16w8) or the float graph itself (float16)
    if quantized:
        quantize_graph(float_model, qdq_model, PixelReader(processed), 8, 8, other_weights="uint8")
        float_model.unlink()
    else:
        float_model.replace(qdq_model)
    timing["calibrate_qdq_s"] = round(time.monotonic() - started, 1)

    started = time.monotonic()
    soc_files = {}
    for name, soc in compile_for.items():
        target = out_dir / name / f"{GRAPH}_ctx.onnx"
        if settings.compiler == "qai-hub":
            qai_hub_compiler.compile_on_hub(qdq_model, target, name, soc, profile=settings.qai_hub_profile)
        else:
            ep_sessions.compile_context(qdq_model, target, soc.soc_model, soc.htp_arch, input_quantization_on_npu=quantized,
                                        float16=not quantized)
        soc_files[name] = f"{name}/{target.name}"
    timing["compile_s"] = round(time.monotonic() - started, 1)
    if not shipped_qdq:
        qdq_model.unlink()
    cfg = vision.vision_config
    config = {"crops": crops, "num_crops": settings.num_crops, "tokens_per_crop": vision.num_img_tokens,
              "input": "pixel_values", "output": OUTPUT, "separators": SEPARATORS,
              "qdq": f"qdq/{GRAPH}.onnx" if shipped_qdq else None,
              "precision": settings.vision_precision, "npu_input_quantization": quantized,
              "calibration_images": folder or f"edgeslm synthetic ({len(images)})",
              "quantization": "a16w8: uint16 activations, int8 per-channel MatMul weights, uint8 norm/Conv weights"
              if quantized else "float16 on the HTP (fp16 precision of the float32 graph); float32 portable graph"}
    clip = {"positions": (int(cfg["image_size"]) // int(cfg["patch_size"])) ** 2 + 1, "hidden": int(cfg["hidden_size"]),
            "heads": int(cfg["num_attention_heads"]), "intermediate": int(cfg["intermediate_size"])}
    return VisionBuild(config, soc_files, features, timing, clip)


def vision_info(build: VisionBuild, out_dir: Path, settings: QnnSettings):
    """The manifest's image facts (the first SoC's encoder binary is the vision part's size)."""
    from ...bundle.manifest import VisionInfo
    from ...vision.phi3v_processor import tokens_per_crop_grid

    first = Path(next(iter(build.soc_files.values())))
    weight_bytes = sum(p.stat().st_size for p in (out_dir / first.parent).glob(first.stem + "*") if p.is_file())
    weight_bytes += (out_dir / SEPARATORS).stat().st_size
    c, crops = build.clip, build.config["crops"]
    # 16-bit activations (a16w8 or fp16) of one call: one layer's attention scores and MLP, the pixels (float32)
    activations = 2 * crops * c["positions"] * (c["heads"] * c["positions"] + c["intermediate"] + 4 * c["hidden"])
    return VisionInfo(
        num_crops=settings.num_crops, tokens_per_crop=build.config["tokens_per_crop"],
        tokens_per_image={str(n): max(tokens_per_crop_grid(n).values()) for n in (1, 2, 4, 8, 16)
                          if n <= settings.num_crops},
        tokens_by_grid=tokens_per_crop_grid(settings.num_crops),
        vision_weight_bytes=weight_bytes, vision_runtime_bytes=int(activations + 4 * crops * 3 * 336 * 336),
        precision=settings.vision_precision)
