"""The artifact formats edgeslm knows, and which backend module implements each.

A format is one kind of artifact a target can accept (``onnx-int4-cpu``, ``openvino-int4``, ...).
Each is served by one backend package under ``edgeslm.backends`` that exposes an exporter (build
side) and an engine (device side). The table below is plain data so that reading it imports no
backend; a format whose backend is not written yet has ``implemented=False`` and names the issue
that adds it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class FormatSpec:
    name: str
    backend: str  # module under edgeslm.backends
    device_kind: str  # cpu | gpu | npu
    cpu_archs: tuple[str, ...]
    runtime_package: str  # what the device must have installed
    runtime_min_version: str
    device_extra: str  # pip extra for the device side
    build_extra: str  # pip extra for the build side
    implemented: bool
    planned_in: str = ""  # where a not-yet-implemented format is tracked
    settings: str = ""  # "module:Class" of the recipe options dataclass
    accelerator: str = ""  # what the host must offer: "" (any CPU), cuda, metal, qnn, openvino
    auto_select: str = "always"  # "always", or "native": only on hosts of its own platform unless asked for

    def settings_class(self) -> type:
        module_name, _, class_name = self.settings.partition(":")
        return getattr(importlib.import_module(module_name), class_name)


_ONNX = "edgeslm.backends.onnx_genai.settings:OnnxSettings"

FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec("onnx-int4-cpu", "onnx_genai", "cpu", ("x86_64", "arm64"), "onnxruntime-genai", "0.18.0",
                   "ort", "build-onnx", True, settings=_ONNX),
        FormatSpec("onnx-int4-cuda", "onnx_genai", "gpu", ("x86_64", "arm64"), "onnxruntime-genai-cuda", "0.18.0",
                   "ort-cuda", "build-onnx", True, settings=_ONNX, accelerator="cuda"),
        FormatSpec("openvino-int4", "openvino", "npu", ("x86_64",), "openvino-genai", "2026.0",
                   "openvino", "build-openvino", True, settings="edgeslm.backends.openvino.settings:OpenVinoSettings",
                   accelerator="openvino"),
        FormatSpec("mlx", "mlx", "gpu", ("arm64", "x86_64"), "mlx-lm", "0.31.0",
                   "mlx", "build-mlx", True, settings="edgeslm.backends.mlx.settings:MlxSettings",
                   accelerator="metal", auto_select="native"),
        FormatSpec("qnn-context", "qnn", "npu", ("arm64", "x86_64"), "onnxruntime-qnn", "2.7.0",
                   "qnn", "build-qnn", True, settings="edgeslm.backends.qnn.settings:QnnSettings",
                   accelerator="qnn"),
    )
}


def get_format(name: str, where: str = "") -> FormatSpec:
    try:
        return FORMATS[name]
    except KeyError:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}unknown artifact format '{name}'",
                          hint=f"known formats: {', '.join(FORMATS)}") from None
