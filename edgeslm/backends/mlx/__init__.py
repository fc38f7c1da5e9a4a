"""MLX (Apple silicon) format: mlx-lm conversion on the build side, mlx-lm generation on the device."""

from ...backend import Backend, FormatSpec

_HERE = __name__

BACKEND = Backend(
    name="mlx",
    formats=(
        FormatSpec("mlx", "gpu", ("arm64", "x86_64"), "mlx-lm", "0.31.0", "mlx", "build-mlx",
                   f"{_HERE}.settings:MlxSettings"),
    ),
    exporter_ref=f"{_HERE}.exporter:EXPORTER",
    engine_ref=f"{_HERE}.engine:open_engine",
    scorer_ref=f"{_HERE}.scoring",
    host_support_ref=f"{_HERE}.host_support",
    probe_packages=("mlx", "mlx-lm"),
)
