"""ONNX Runtime GenAI backend: int4 MatMulNBits models built by onnxruntime-genai's model builder."""

from ...backend import Backend, FormatSpec

_HERE = __name__
_SETTINGS = f"{_HERE}.settings:OnnxSettings"

BACKEND = Backend.in_package(
    __name__,
    name="onnx_genai",
    formats=(
        FormatSpec("onnx-int4-cpu", "cpu", ("x86_64", "arm64"), "onnxruntime-genai", "0.18.0", "ort", "build-onnx",
                   _SETTINGS, runtime_alternatives=("onnxruntime-genai", "onnxruntime-genai-cuda",
                                                    "onnxruntime-genai-directml")),
        FormatSpec("onnx-int4-cuda", "gpu", ("x86_64", "arm64"), "onnxruntime-genai-cuda", "0.18.0", "ort-cuda",
                   "build-onnx", _SETTINGS),
    ),
    probe_packages=("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime-genai-directml", "onnxruntime"),
)
