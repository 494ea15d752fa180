#!/usr/bin/env bash
# From a fresh clone: install, build, then run the quickstart pipeline (configs/quickstart.toml).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/tools/build.sh"
"${DSCHAT_BUILD_DIR:-$root/build}/bin/dschat" validate "$root/configs/quickstart.toml"
exec "${DSCHAT_BUILD_DIR:-$root/build}/bin/dschat" run "$root/configs/quickstart.toml" "$@"
