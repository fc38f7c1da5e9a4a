"""Load an MLX artifact's model with mlx-lm (no tokenizer: the runtime brings its own).

Without Metal (Linux ``mlx[cpu]``), mlx's quantized matmul with bfloat16 scales is emulated and ~9×
slower than with float32 ones (measured on the docs model, 256 tokens: 36.4 s against 4.2 s), so on
a CPU the floating-point tensors (scales, biases, norms) are upcast to float32: the same values,
computed at higher precision. The packed weights are untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import BackendMissingError, BundleError


def load_mlx_model(artifact_dir: Path) -> Any:
    try:
        import mlx.core as mx
        from mlx.utils import tree_map
        from mlx_lm.utils import load_model
    except ImportError:
        raise BackendMissingError("mlx-lm is not installed", hint="pip install 'edgeslm[mlx]'") from None
    try:
        model, _config = load_model(Path(artifact_dir))
    except Exception as exc:  # missing shards, shape mismatches: ValueError/FileNotFoundError
        raise BundleError(f"mlx-lm cannot load {artifact_dir}: {type(exc).__name__}: {exc}") from None
    if not metal_available():
        model.update(tree_map(lambda v: v.astype(mx.float32) if mx.issubdtype(v.dtype, mx.floating) else v,
                              model.parameters()))
    return model


def metal_available() -> bool:
    import mlx.core as mx

    try:
        return bool(mx.metal.is_available())
    except AttributeError:
        return False
