"""GGUF format (llama.cpp, Ollama): edgeslm's streaming GGUF writer on the build side, llama-cpp-python on the device."""

from ...backend import Backend, FormatSpec

BACKEND = Backend.in_package(
    __name__,
    name="gguf",
    formats=(
        FormatSpec("gguf", "cpu", ("x86_64", "arm64"), "llama-cpp-python", "0.3.0", "llama", "build-gguf",
                   f"{__name__}.settings:GgufSettings"),
    ),
    probe_packages=("llama-cpp-python",),
)
