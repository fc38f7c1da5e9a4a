"""Snapdragon NPU format: static-shape QDQ graphs compiled offline into QNN HTP context binaries."""

from ...backend import Backend, BuildOption, FormatSpec

_HERE = __name__

BACKEND = Backend.in_package(
    __name__,
    name="qnn",
    formats=(
        FormatSpec("qnn-context", "npu", ("arm64", "x86_64"), "onnxruntime-qnn", "2.7.0", "qnn", "build-qnn",
                   f"{_HERE}.settings:QnnSettings"),
    ),
    probe_packages=("onnxruntime-qnn",),
    build_options=(BuildOption("--qnn-compiler", "qnn-context.compiler", ("onnxruntime-qnn", "qai-hub"),
                               "Who compiles Snapdragon NPU context binaries: onnxruntime-qnn offline (default) or "
                               "Qualcomm AI Hub (needs an API token)."),),
)
