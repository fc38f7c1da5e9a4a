"""Snapdragon NPU format: static-shape QDQ graphs compiled offline into QNN HTP context binaries."""

from ...backend import Backend, BuildOption, FormatSpec

_HERE = __name__

BACKEND = Backend(
    name="qnn",
    formats=(
        FormatSpec("qnn-context", "npu", ("arm64", "x86_64"), "onnxruntime-qnn", "2.7.0", "qnn", "build-qnn",
                   f"{_HERE}.settings:QnnSettings"),
    ),
    exporter_ref=f"{_HERE}.exporter:EXPORTER",
    engine_ref=f"{_HERE}.engine:open_engine",
    scorer_ref=f"{_HERE}.scoring",
    host_support_ref=f"{_HERE}.host_support",
    probe_packages=("onnxruntime-qnn",),
    build_options=(BuildOption("--qnn-compiler", "qnn-context.compiler", ("onnxruntime-qnn", "qai-hub"),
                               "Who compiles Snapdragon NPU context binaries: onnxruntime-qnn offline (default) or "
                               "Qualcomm AI Hub (needs an API token)."),),
)
