"""Read what quantization an MLX artifact's safetensors really hold, from the headers only.

mlx-lm stores a quantized layer as ``<path>.weight`` (uint32, ``bits`` values packed per 32 bits),
``<path>.scales`` and ``<path>.biases`` (one per group of ``group_size`` inputs). From the shapes:
inputs = scales[-1] * group_size and bits = weight[-1] * 32 / inputs. Counting them this way checks
the artifact itself, not the config that claims it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ...safetensors_header import read_header


def _header(path: Path) -> dict[str, Any]:
    return read_header(path)[1]


def quantized_layers(artifact_dir: Path, group_size: int) -> dict[str, Any]:
    """Per quantized layer path → bits, assuming ``group_size``; plus counts of what is not quantized."""
    tensors: dict[str, dict[str, Any]] = {}
    for path in sorted(artifact_dir.glob("model*.safetensors")):
        tensors.update(_header(path))
    layers: dict[str, int] = {}
    for name, info in tensors.items():
        if not name.endswith(".scales"):
            continue
        prefix = name[: -len(".scales")]
        weight = tensors.get(f"{prefix}.weight")
        if weight is None or weight["dtype"] != "U32":
            continue
        inputs = info["shape"][-1] * group_size
        layers[prefix] = weight["shape"][-1] * 32 // inputs if inputs else 0
    float_tensors = [n for n, i in tensors.items() if i["dtype"] in ("F16", "BF16", "F32")
                     and not n.endswith((".scales", ".biases"))]
    return {
        "layers": layers,
        "bits_histogram": {str(b): n for b, n in sorted(Counter(layers.values()).items())},
        "unquantized_tensors": len(float_tensors),
    }
