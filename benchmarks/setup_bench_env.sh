#!/usr/bin/env bash
# Benchmark environment: benchmarks/.venv with edgeslm[ort,build-onnx], gguf, matplotlib, and
# llama-cpp-python built from its sdist, plus llama.cpp's own HF->GGUF converter.
#
#   bash benchmarks/setup_bench_env.sh          # idempotent; FORCE_REBUILD=1 rebuilds llama-cpp-python
#
# What it leaves:
#   benchmarks/.venv/bin/python                           python 3.11 with everything below
#   benchmarks/.venv/sdist/llama_cpp_python-X.tar.gz     the sdist that was built
#   benchmarks/.venv/llama.cpp/convert_hf_to_gguf.py     llama.cpp's converter (vendored in that sdist), with
#                                                         its conversion/ package, gguf-py and models/templates
#   run the converter as: benchmarks/.venv/bin/python benchmarks/.venv/llama.cpp/convert_hf_to_gguf.py HF_DIR ...
#
# Build flags: GGML_NATIVE=OFF with an explicit AVX2/AVX-512(+VNNI) set and AMX off. With GGML_NATIVE=ON on
# an AMX CPU (Sapphire Rapids and later) the Q4_0 path segfaults, so native and AMX stay off.
# The converter imports torch at the top level; the CPU wheel is used when one can be had (the PyTorch CPU
# index, or a +cpu wheel in pip's find-links folder), otherwise pip's default torch.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/benchmarks/.venv"
PYTHON="${PYTHON:-python3.11}"
LCP_VERSION="0.3.36"
SDIST_DIR="$VENV/sdist"
CONVERTER_DIR="$VENV/llama.cpp"

log() { printf '[setup_bench_env %(%H:%M:%S)T] %s\n' -1 "$*"; }

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip)
"${PIP[@]}" install --upgrade pip wheel

# 1. torch (CPU build if possible), then the project and the benchmark tools.
if ! "$PY" -c "import torch" 2>/dev/null; then
    if "$PY" - <<'EOF' 2>/dev/null
import urllib.request
urllib.request.urlopen("https://download.pytorch.org/whl/cpu/torch/", timeout=15)
EOF
    then
        log "installing torch from the PyTorch CPU index"
        "${PIP[@]}" install --index-url https://download.pytorch.org/whl/cpu torch
    else
        cpu_wheel=""
        for d in ${PIP_FIND_LINKS:-} $("${PIP[@]}" config get global.find-links 2>/dev/null || true); do
            [[ -d "$d" ]] || continue
            cand=$(ls "$d"/torch-*+cpu-cp311-cp311-*x86_64.whl 2>/dev/null | sort -V | tail -n1 || true)
            [[ -n "$cand" ]] && cpu_wheel="$cand"
        done
        if [[ -n "$cpu_wheel" ]]; then
            log "PyTorch CPU index unreachable; using local CPU wheel $cpu_wheel"
            "${PIP[@]}" install "$cpu_wheel"
        else
            log "PyTorch CPU index unreachable and no local +cpu wheel: pip's default torch will be installed"
        fi
    fi
fi
log "installing edgeslm[ort,build-onnx], matplotlib, gguf, numpy"
(cd "$ROOT" && "${PIP[@]}" install -e '.[ort,build-onnx]' matplotlib 'gguf==0.19.*' numpy)

# 2. llama-cpp-python from its sdist (the same file the converter is taken from).
mkdir -p "$SDIST_DIR"
SDIST="$SDIST_DIR/llama_cpp_python-$LCP_VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
    log "downloading the llama-cpp-python $LCP_VERSION sdist"
    "${PIP[@]}" download --no-binary llama-cpp-python --no-deps "llama-cpp-python==$LCP_VERSION" -d "$SDIST_DIR"
fi
installed=$("$PY" -c "import llama_cpp; print(llama_cpp.__version__)" 2>/dev/null || true)
if [[ "$installed" != "$LCP_VERSION" || -n "${FORCE_REBUILD:-}" ]]; then
    log "building llama-cpp-python $LCP_VERSION from source (about 10+ minutes on 2 cores)"
    export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=ON"
    export CMAKE_BUILD_PARALLEL_LEVEL=2
    start=$SECONDS
    force=()
    [[ -n "$installed" ]] && force=(--force-reinstall --no-deps)
    "${PIP[@]}" install --no-binary llama-cpp-python --no-cache-dir "${force[@]}" "$SDIST"
    log "llama-cpp-python built in $((SECONDS - start)) s"
else
    log "llama-cpp-python $installed already installed (FORCE_REBUILD=1 to rebuild)"
fi

# 3. llama.cpp's converter, from the vendored llama.cpp in the sdist.
if [[ ! -f "$CONVERTER_DIR/convert_hf_to_gguf.py" ]]; then
    log "extracting convert_hf_to_gguf.py, conversion/, gguf-py/ into $CONVERTER_DIR"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    vendor="llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
    tar -xzf "$SDIST" -C "$tmp" "$vendor/convert_hf_to_gguf.py" "$vendor/conversion" "$vendor/gguf-py" \
        "$vendor/models/templates" "$vendor/requirements" "$vendor/LICENSE"
    mkdir -p "$CONVERTER_DIR"
    cp -r "$tmp/$vendor/." "$CONVERTER_DIR/"
fi
# What the converter imports beyond torch/numpy/transformers/safetensors (already there): sentencepiece for
# SPM vocabularies (Phi-3), protobuf for slow-tokenizer conversion, and gguf-py's own dependencies.
"${PIP[@]}" install sentencepiece protobuf tqdm pyyaml requests

# 4. Checks.
log "llama_cpp: $("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')"
"$PY" "$CONVERTER_DIR/convert_hf_to_gguf.py" --help >/dev/null
log "converter OK: $PY $CONVERTER_DIR/convert_hf_to_gguf.py"
log "done"
