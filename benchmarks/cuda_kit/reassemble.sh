#!/usr/bin/env bash
# Reassemble the onnxruntime-gpu 1.31.1 (CUDA 13) + onnxruntime-genai-cuda 0.18.0 kit and install it
# with --no-deps --no-index into a target dir, then run a CUDA smoke test.
#   usage: bash reassemble.sh [PARTS_DIR] [TARGET]
#   env:   PY=/opt/torch/.venv/bin/python3  WORK=/tmp/ortgpu-kit-work  SMOKE=1  SMOKE_ARGS=  CLEAN=0
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PARTS_DIR="$(cd "${1:-$HERE}" && pwd)"
TARGET="${2:-/tmp/ortgpu}"
PY="${PY:-/opt/torch/.venv/bin/python3}"
WORK="${WORK:-/tmp/ortgpu-kit-work}"

echo "== checking parts in $PARTS_DIR"
cd "$PARTS_DIR"
sha256sum -c PARTS.SHA256            # fails if a part is missing or corrupt

echo "== unpacking to $WORK"
rm -rf "$WORK"; mkdir -p "$WORK"
cat $(awk '{print $2}' PARTS.SHA256 | sort) | tar -xf - -C "$WORK"
cd "$WORK/wheels"
sha256sum -c SHA256SUMS

echo "== installing into $TARGET with $PY"
mkdir -p "$TARGET"
MAIN_WHEELS=(onnxruntime_gpu-1.31.1-*.whl onnxruntime_genai_cuda-0.18.0-*.whl)
# flatbuffers/packaging/protobuf are already in the torch venv (the CPU onnxruntime needs them);
# install the bundled copies only for those that are missing.
FALLBACK=()
"$PY" -c 'import flatbuffers' 2>/dev/null || FALLBACK+=(fallback/flatbuffers-*.whl)
"$PY" -c 'import packaging'   2>/dev/null || FALLBACK+=(fallback/packaging-*.whl)
"$PY" -c 'import google.protobuf' 2>/dev/null || FALLBACK+=(fallback/protobuf-*.whl)
"$PY" -c 'import numpy' 2>/dev/null || { echo "numpy missing in $PY (not bundled)"; exit 1; }
if "$PY" -m pip --version >/dev/null 2>&1; then
  "$PY" -m pip install --no-deps --no-index --upgrade --disable-pip-version-check \
      --target "$TARGET" "${MAIN_WHEELS[@]}" "${FALLBACK[@]}"
else
  # venv without pip (e.g. made by uv): these wheels have no .data dir, so unzip == install.
  echo "(no pip in $PY: extracting wheels with zipfile)"
  "$PY" - "$TARGET" "${MAIN_WHEELS[@]}" "${FALLBACK[@]}" <<'PYEOF'
import sys, zipfile
t = sys.argv[1]
for w in sys.argv[2:]:
    zipfile.ZipFile(w).extractall(t); print("extracted", w)
PYEOF
fi
rm -rf "$TARGET/_ortgpu_smoke"; cp -r "$WORK/wheels/smoke" "$TARGET/_ortgpu_smoke"
cp "$HERE/ortgpu_env.sh" "$TARGET/ortgpu_env.sh" 2>/dev/null || cp "$PARTS_DIR/ortgpu_env.sh" "$TARGET/ortgpu_env.sh"
[ "${CLEAN:-0}" = 1 ] && rm -rf "$WORK"

echo "== installed. To use:  export ORTGPU_TARGET=$TARGET; . $TARGET/ortgpu_env.sh"
if [ "${SMOKE:-1}" = 1 ]; then
  export ORTGPU_TARGET="$TARGET"
  . "$TARGET/ortgpu_env.sh"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "PYTHONPATH=$PYTHONPATH"
  "$PY" "$TARGET/_ortgpu_smoke/smoke.py" ${SMOKE_ARGS:-}
fi
