#!/usr/bin/env bash
# From a fresh clone: install, build (tests included), run the whole test suite; then build the CUDA configuration
# (-DDSCHAT_CUDA=ON, into build-cuda/) so the GPU code compiles and links on every run, and run the tests that
# exercise it without a GPU (the CUDA tests skip saying why; validate refuses device = "cuda" where none is visible).
# DSCHAT_SKIP_CUDA_BUILD=1 leaves the CUDA part out.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${DSCHAT_BUILD_DIR:-$root/build}"
"$root/tools/build.sh"
(cd "$build" && ctest --output-on-failure --timeout 900 "$@")

if [ "${DSCHAT_SKIP_CUDA_BUILD:-0}" != 1 ]; then
  cuda_build="${DSCHAT_CUDA_BUILD_DIR:-$root/build-cuda}"
  start=$(date +%s)
  DSCHAT_BUILD_DIR="$cuda_build" "$root/tools/build.sh" -DDSCHAT_CUDA=ON
  echo "[test] CUDA configuration built in $(( $(date +%s) - start )) s ($cuda_build)"
  "$cuda_build/bin/dschat" --version
  (cd "$cuda_build" && ctest --output-on-failure --timeout 900 -R '^(test_cuda|test_cli)$')
fi
