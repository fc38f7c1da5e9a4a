"""Recipe options for the QNN format (Snapdragon Hexagon NPU, HTP backend)."""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class SocParameters:
    """How the QNN HTP compiler names one Snapdragon SoC.

    soc_model: ``Qnn_SocModel_t`` value of the QNN SDK (QnnTypes.h), the ORT QNN EP's ``soc_model``.
    htp_arch: Hexagon architecture version, the EP's ``htp_arch`` (this EP accepts 68, 69, 73, 75, 81).
    device_ids: how hosts report the SoC (device-tree compatible, Android ``ro.soc.model``), lower case.
    qai_hub_device: the Qualcomm AI Hub device name used by the optional cloud compiler.
    npu_memory_mb: what one process may map on that SoC's HTP (context binaries + KV cache + activations):
        selection refuses an artifact whose parts need more. The HTP maps through a 32-bit virtual address
        space per session group (v73/v75: about 3.5 GB usable), whatever the device's RAM.
    """

    soc_model: int
    htp_arch: Literal[68, 69, 73, 75, 81]
    device_ids: tuple[str, ...] = ()
    qai_hub_device: str = ""
    npu_memory_mb: int = 3584


def _default_socs() -> Mapping[str, SocParameters]:
    return types.MappingProxyType({
        "SC8380XP": SocParameters(60, 73, ("sc8380xp", "x1e80100", "x1e78100", "x1e001de"), "Snapdragon X Elite CRD"),
        "SM8650": SocParameters(57, 75, ("sm8650", "pineapple"), "Samsung Galaxy S24 (Family)"),
    })


@dataclass(frozen=True)
class QnnSettings:
    """Options of the static-graph export, QDQ quantization and offline HTP compilation.

    context_length: tokens the fixed KV cache holds (prompt + answer); the graphs are compiled for it.
    prefill_chunk: prompt tokens per prefill graph call (the last chunk is padded).
    weight_bits: 4 (per-channel int4, the default: w4a16) or 8 (per-channel int8: a16w8) weights; activations
        are 16-bit.
    lm_head_bits: the LM head's weights (8 by default, as AI Hub's w4a16 Phi-3.5; 4 for the smallest binary).
    part_layers: decoder layers per part (each part is its own pair of context binaries); 0 = as many as
        fit ``part_budget_mb`` of float32 weights (the build's per-part memory: part_plan.py).
    calibration_sequences / calibration_decode_steps: how much of the calibration text is run through
        the float graphs to record activation ranges (each sequence: two prefill chunks, then decode steps).
    share_weights: one context binary for the prefill and decode graphs (``ep.share_ep_contexts``):
        half the size, but onnxruntime-qnn cannot load such a binary on x86_64, so it is only checked
        on a device; off by default.
    ship_qdq_graphs: also put the portable QDQ graphs in the bundle (for devices whose SoC has no
        binary, which can compile them on first load, and for quality checks off the device).
    compiler: ``onnxruntime-qnn`` (offline, on this machine) or ``qai-hub`` (Qualcomm AI Hub, needs a token).
    qai_hub_profile: with the qai-hub compiler, also submit a profile job per compiled graph on the SoC's
        AI Hub device (the job ids are recorded in the manifest; results are on AI Hub).
    socs: SoCs to compile context binaries for, by Qualcomm part number.
    num_crops: Phi-3.5-vision only: the most 336-px crops an image is cut into (1..16); the vision encoder
        graph is compiled for num_crops + 1 crops (the global one first).
    vision_precision: Phi-3.5-vision only: the vision encoder on the HTP in ``float16`` (the float graph
        compiled with HTP fp16 precision: no calibration; the default, because a16w8 missed the accuracy
        gate on the demo model, docs/qnn.md) or ``a16w8`` (QDQ: 16-bit activations, int8 per-channel weights;
        half the encoder's size).
    vision_calibration_images: Phi-3.5-vision only: a folder of images that calibrate the vision encoder's
        (and the decoder's image-side) 16-bit activation ranges; empty: images the build draws itself
        (``vision_calibration``), never the evaluation set.
    vision_calibration_count: how many calibration images calibrate the a16w8 encoder (32: on the demo model
        the worst feature error against the float graph was 16.9 with 8 drawn images, 12.0 with 16, 3.7 with
        32); the decoder's image side takes ``calibration_sequences`` of them (whole image prompts).
    """

    context_length: int = 1024
    prefill_chunk: int = 64
    weight_bits: Literal[4, 8] = 4
    lm_head_bits: Literal[4, 8] = 8
    part_layers: int = 0
    part_budget_mb: int = 900
    calibration_sequences: int = 8
    calibration_decode_steps: int = 16
    share_weights: bool = False
    ship_qdq_graphs: bool = True
    compiler: Literal["onnxruntime-qnn", "qai-hub"] = "onnxruntime-qnn"
    qai_hub_profile: bool = False
    socs: Mapping[str, SocParameters] = field(default_factory=_default_socs)
    num_crops: int = 4
    vision_precision: Literal["float16", "a16w8"] = "float16"
    vision_calibration_images: str = ""
    vision_calibration_count: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.num_crops <= 16:
            raise ValueError(f"num_crops must be between 1 and 16, got {self.num_crops}")
        if not 1 <= self.vision_calibration_count <= 256:
            raise ValueError("vision_calibration_count must be between 1 and 256")
        if not 16 <= self.prefill_chunk <= self.context_length:
            raise ValueError("prefill_chunk must be between 16 and context_length")
        if self.context_length > 4096:
            raise ValueError("context_length must be at most 4096 (LongRoPE short factors are used)")
        if self.calibration_sequences < 1 or self.calibration_decode_steps < 0:
            raise ValueError("calibration_sequences must be >= 1 and calibration_decode_steps >= 0")
        if not self.socs:
            raise ValueError("socs must name at least one SoC")
        if self.part_layers < 0 or not 200 <= self.part_budget_mb <= 2000:
            raise ValueError("part_layers must be >= 0 and part_budget_mb between 200 and 2000 (protobuf's 2 GB "
                             "limit on one float graph)")

    def socs_for(self, target_socs: tuple[str, ...]) -> dict[str, SocParameters]:
        """The recipe's SoCs that the targets name (all of them when the targets name none); a target SoC
        the recipe has no parameters for is an error."""
        if not target_socs:
            return dict(self.socs)
        chosen = {}
        for wanted in target_socs:
            match = next((name for name, soc in self.socs.items()
                          if wanted.lower() in (name.lower(), *soc.device_ids)), None)
            if match is None:
                raise ValueError(f"the target's SoC {wanted} has no [formats.qnn-context.socs.{wanted}] table in the "
                                 f"recipe (it has {', '.join(self.socs)})")
            chosen[match] = self.socs[match]
        return chosen

