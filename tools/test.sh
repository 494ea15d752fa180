#!/usr/bin/env bash
# From a fresh clone: install, build (tests included), run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${DSCHAT_BUILD_DIR:-$root/build}"
"$root/tools/build.sh"
cd "$build"
ctest --output-on-failure --timeout 900 "$@"
