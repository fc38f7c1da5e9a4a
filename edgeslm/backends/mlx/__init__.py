"""MLX (Apple silicon) format: mlx-lm conversion on the build side, mlx-lm generation on the device."""

from ...backend import Backend, FormatSpec

_HERE = __name__

BACKEND = Backend.in_package(
    __name__,
    name="mlx",
    formats=(
        FormatSpec("mlx", "gpu", ("arm64", "x86_64"), "mlx-lm", "0.31.0", "mlx", "build-mlx",
                   f"{_HERE}.settings:MlxSettings"),
    ),
    probe_packages=("mlx", "mlx-lm"),
)
