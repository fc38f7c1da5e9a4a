"""OpenVINO backend: stateful int4 IR (streamed ONNX + convert_model, or optimum-intel + NNCF), run by openvino-genai."""

from ...backend import Backend, FormatSpec

_HERE = __name__

BACKEND = Backend.in_package(
    __name__,
    name="openvino",
    formats=(
        FormatSpec("openvino-int4", "npu", ("x86_64",), "openvino-genai", "2026.0", "openvino", "build-openvino",
                   f"{_HERE}.settings:OpenVinoSettings"),
    ),
    probe_packages=("openvino", "openvino-genai"),
)
