"""Recipe options for the OpenVINO format: which exporter makes the IR, and its weight compression."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from ...builder.layer_widths import group_size_problem

NPU_GROUP_SIZES = (128, -1)


@dataclass(frozen=True)
class OpenVinoSettings:
    """How the IR is made: the exporter, and NNCF-style weight compression options.

    exporter: ``onnx-streaming`` (edgeslm's streaming int4 ONNX converted by ``openvino.convert_model``:
        ~2-3 GB of RAM at 3.8B, data-free int4_sym groups of 16..256 only; ``onnx_route``) or
        ``optimum-intel`` (optimum-intel traces the torch model and NNCF compresses it: ~11 GB at 3.8B;
        every option below, channel-wise and data-aware included).
    mode: weight format of the compressed layers (NPU needs int4_sym).
    group_size: quantization group along the input dimension; -1 is channel-wise.
    ratio: share of the layers in ``mode``; the rest use ``backup_precision`` (NPU needs 1.0).
    backup_precision: format of the layers not in ``mode`` (embeddings/lm_head when ratio < 1).
    awq, scale_estimation, gptq: data-aware methods; they calibrate on ``--calibration-text``, else
        ``calibration_text`` here, else the build's default (edgeslm's built-in calibration text).
    calibration_samples: how many text chunks NNCF calibrates on.
    devices: the OpenVINO devices the IR is meant for, best first (recorded in the manifest).
    npu_max_prompt_len / npu_min_response_len: the static shapes the NPU pipeline is compiled for.
    num_crops / vision_precision (Phi-3.5-vision only): most 336-px crops per image (written to the
        artifact's preprocessor_config.json, which VLMPipeline reads) and the vision parts' linear
        layers: int8 (NNCF int8_asym) or float16.
    """

    exporter: Literal["onnx-streaming", "optimum-intel"] = "onnx-streaming"
    mode: Literal["int4_sym", "int4_asym", "int8_sym", "int8_asym"] = "int4_sym"
    group_size: Literal[-1, 32, 64, 128, 256] = 128
    ratio: float = 1.0
    backup_precision: Literal["int8_sym", "int8_asym", "none"] = "int8_sym"
    awq: bool = False
    scale_estimation: bool = False
    gptq: bool = False
    calibration_text: str = ""
    calibration_samples: int = 64
    devices: tuple[Literal["NPU", "GPU", "CPU"], ...] = ("NPU", "GPU", "CPU")
    npu_max_prompt_len: int = 1024
    npu_min_response_len: int = 128
    num_crops: int = 4
    vision_precision: Literal["int8", "float16"] = "int8"

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.calibration_samples < 1:
            raise ValueError("calibration_samples must be at least 1")
        if self.npu_max_prompt_len < 64 or self.npu_min_response_len < 16:
            raise ValueError("npu_max_prompt_len must be >= 64 and npu_min_response_len >= 16")
        if not 1 <= self.num_crops <= 16:
            raise ValueError(f"num_crops must be from 1 to 16, got {self.num_crops}")

    @property
    def bits(self) -> int:
        return 4 if self.mode.startswith("int4") else 8

    @property
    def symmetric(self) -> bool:
        return self.mode.endswith("_sym")

    @property
    def data_aware(self) -> bool:
        return self.awq or self.scale_estimation or self.gptq

    def problems(self, config: dict[str, Any]) -> list[str]:
        """Option combinations that cannot work for this checkpoint (checked before any export starts)."""
        found = []
        groups = NPU_GROUP_SIZES if "NPU" in self.devices else typing.get_args(
            typing.get_type_hints(OpenVinoSettings)["group_size"])
        problem = group_size_problem(config, self.group_size, "openvino-int4", groups)
        if problem:
            found.append(problem)
        if self.bits == 8 and (self.data_aware or self.group_size != -1):
            found.append("int8 modes are channel-wise and data-free: use group_size = -1 and no awq/"
                         "scale_estimation/gptq")
        if self.awq and self.gptq:
            found.append("awq and gptq cannot be combined (NNCF applies one of them)")
        if "NPU" in self.devices:
            if self.mode != "int4_sym":
                found.append(f"the NPU needs symmetric int4 weights, not {self.mode} (drop NPU from devices "
                             "or use mode = int4_sym)")
            if self.group_size not in NPU_GROUP_SIZES:
                found.append(f"the NPU needs group_size 128 or -1 (channel-wise), not {self.group_size}")
            if self.ratio != 1.0:
                found.append("the NPU needs ratio = 1.0 (every layer in int4)")
        if self.exporter == "onnx-streaming":
            from .onnx_route import route_problems

            found.extend(p for p in route_problems(self) if p not in found)
        return found
