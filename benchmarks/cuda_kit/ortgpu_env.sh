# Source this (bash):  ORTGPU_TARGET=/tmp/ortgpu . ortgpu_env.sh
# Puts onnxruntime-gpu 1.31.1 + onnxruntime-genai-cuda 0.18.0 (installed with --target) first on
# PYTHONPATH (shadowing the venv's CPU onnxruntime 1.30.0) and the torch cu130 venv's CUDA 13 libs
# (nvidia/cu13/lib, nvidia/cudnn/lib, ...) on LD_LIBRARY_PATH. Must be set BEFORE python starts.
ORTGPU_TARGET="${ORTGPU_TARGET:-/tmp/ortgpu}"
TORCH_VENV="${TORCH_VENV:-/opt/torch/.venv}"
_ortgpu_nv="$(ls -d "$TORCH_VENV"/lib/python3*/site-packages/nvidia/*/lib 2>/dev/null | paste -sd: - || true)"
if [ -z "$_ortgpu_nv" ] && [ -x "$TORCH_VENV/bin/python3" ]; then
  _ortgpu_sp="$("$TORCH_VENV/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' || true)"
  _ortgpu_nv="$(ls -d "$_ortgpu_sp"/nvidia/*/lib 2>/dev/null | paste -sd: - || true)"
fi
[ -n "$_ortgpu_nv" ] || echo "ortgpu_env.sh: WARNING: no nvidia/*/lib found under $TORCH_VENV" >&2
export LD_LIBRARY_PATH="${_ortgpu_nv}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="${ORTGPU_TARGET}${PYTHONPATH:+:$PYTHONPATH}"
unset _ortgpu_nv _ortgpu_sp
