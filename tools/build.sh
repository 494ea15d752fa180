#!/usr/bin/env bash
# Set-up (if needed) + configure + build into build/ (or $DSCHAT_BUILD_DIR). Extra arguments go to cmake.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${DSCHAT_BUILD_DIR:-$root/build}"
"$root/tools/setup.sh"
if [ ! -f "$build/build.ninja" ] || [ $# -gt 0 ]; then
  mkdir -p "$build"
  cmake -S "$root" -B "$build" -G Ninja "$@" >"$build/configure.log" 2>&1 || { cat "$build/configure.log"; exit 1; }
fi
# Two jobs: each LibTorch translation unit needs ~1 GB and most of a core.
ninja -C "$build" -j "${DSCHAT_JOBS:-2}"
