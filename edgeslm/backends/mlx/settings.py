"""Recipe options for the MLX format (mlx-lm affine quantization)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Literal

from ...builder.layer_widths import group_size_problem


@dataclass(frozen=True)
class MlxSettings:
    """Options of mlx-lm's quantization, called as a library.

    bits: weight bits of the quantized Linear and Embedding layers (4 or 8).
    group_size: quantization group along the input dimension (mlx-lm's default is 64).
    method: ``rtn`` (round to nearest, mlx-lm's ``convert -q``) or ``awq`` (activation-aware
        scaling and clipping, mlx-lm's AWQ with a Phi-3 layer map from edgeslm); awq calibrates on
        the build's calibration text (``--calibration-text``, by default edgeslm's built-in text).
    dtype: precision of the unquantized tensors (norms, scales): ``auto`` keeps the checkpoint's.
    awq_samples / awq_sequence_length: how many token windows of the calibration text AWQ runs on.
    awq_grid: points of AWQ's scale and clip search (mlx-lm uses 20).
    num_crops: Phi-3.5-vision only: the most 336-px crops an image is cut into (1..16; the checkpoint's 4).
    vision_precision: Phi-3.5-vision only: the CLIP tower's and projection's weights, ``float16`` (half the
        size, the layout Macs run) or ``float32``.
    """

    bits: Literal[4, 8] = 4
    group_size: Literal[32, 64, 128] = 64
    method: Literal["rtn", "awq"] = "rtn"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    awq_samples: int = 32
    awq_sequence_length: int = 512
    awq_grid: int = 20
    num_crops: int = 4
    vision_precision: Literal["float16", "float32"] = "float16"

    def __post_init__(self) -> None:
        if not 1 <= self.num_crops <= 16:
            raise ValueError(f"num_crops must be between 1 and 16, got {self.num_crops}")
        if self.awq_samples < 1 or self.awq_sequence_length < 16 or self.awq_grid < 2:
            raise ValueError("awq_samples must be >= 1, awq_sequence_length >= 16 and awq_grid >= 2")

    def problems(self, config: dict[str, Any]) -> list[str]:
        """Settings that cannot work for this checkpoint's layer widths."""
        groups = typing.get_args(typing.get_type_hints(MlxSettings)["group_size"])
        problem = group_size_problem(config, self.group_size, "mlx", groups)
        return [problem] if problem else []
