#!/usr/bin/env bash
# Rebuild /work/gpu-kit/parts/ortgpu-kit.tar.part-* from /work/gpu-kit/wheels at a given part size.
#   usage: bash resplit.sh [SIZE]      (SIZE as for split -b; default 50M = 52,428,800 bytes)
set -euo pipefail
K="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; SIZE="${1:-50M}"
cd "$K"
rm -f parts/ortgpu-kit.tar.part-* parts/PARTS.SHA256
tar --sort=name --mtime='2026-01-01 00:00:00' --owner=0 --group=0 --numeric-owner -cf - wheels \
  | split -b "$SIZE" -d -a 2 - parts/ortgpu-kit.tar.part-
cd parts && sha256sum ortgpu-kit.tar.part-* > PARTS.SHA256
cat PARTS.SHA256; ls -l ortgpu-kit.tar.part-* | awk '{s+=$5} END {print NR " parts, " s " bytes"}'
