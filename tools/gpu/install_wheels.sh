#!/usr/bin/env bash
# Run ON the GPU machine: makes a venv at VENV that uses the machine's own torch and installs the pinned HF stack
# (transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0) offline from the wheels tools/gpu/fetch_wheels.sh
# downloaded. Anything the machine already has that satisfies a requirement (numpy, huggingface_hub, pyyaml, ...)
# is kept, so only what differs is installed; numpy is deliberately not pinned for that reason.
#
#   tools/gpu/install_wheels.sh [--dry-run] VENV [WHEEL_DIR]     (WHEEL_DIR: default .cache/gpu-wheels)
#   VENV/bin/python tools/gpu/bench_ppo_baseline.py ...
#
# PYTHON picks the interpreter that holds torch (default python3). That interpreter is often itself a venv
# (/opt/torch/.venv on the H200 image), and a venv made from a venv with --system-site-packages sees the *base*
# interpreter's site-packages, not the parent venv's; so the parent's site dirs are also added with a .pth file.
set -euo pipefail
dry_run=()
if [ "${1:-}" = "--dry-run" ]; then dry_run=(--dry-run); shift; fi
[ $# -ge 1 ] || { echo "usage: $0 [--dry-run] VENV [WHEEL_DIR]" >&2; exit 2; }
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$1"
wheels="$(cd "${2:-$root/.cache/gpu-wheels}" && pwd)"
py="${PYTHON:-python3}"
pins=(transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0)

tag="$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
links=()
for d in "$wheels" "$wheels/common" "$wheels/$tag" "$wheels/numpy-$tag"; do
  [ -d "$d" ] && links+=(--find-links "$d")
done
echo "[install-wheels] $("$py" -c 'import sys; print(sys.executable, sys.version.split()[0])') ($tag); wheels from $wheels"
[ -d "$wheels/$tag" ] || echo "[install-wheels] note: no $tag/ folder: binary deps must already be installed here"

if [ ! -x "$venv/bin/python" ]; then
  # Without ensurepip (Debian/Ubuntu without python3-venv) the venv gets no pip of its own; the parent's pip
  # then installs into it with --python.
  "$py" -m venv --system-site-packages "$venv" 2>/dev/null || "$py" -m venv --system-site-packages --without-pip "$venv"
fi
"$py" - "$venv" <<'EOF'
import glob, os, sys, sysconfig
venv = sys.argv[1]
target = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages"))[0]
std = {sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")}
# every import dir of the parent but the stdlib (which the venv has anyway) and the current folder
dirs = [p for p in dict.fromkeys(sys.path) if p and os.path.isdir(p) and os.path.abspath(p) != os.getcwd()
        and not any(p == s or (p.startswith(s + os.sep) and "-packages" not in p) for s in std)]
with open(os.path.join(target, "_parent_site.pth"), "w") as f:
    f.write("".join(d + "\n" for d in dirs))
print("[install-wheels] parent site dirs visible in the venv: " + ", ".join(dirs))
EOF

if "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  pip=("$venv/bin/python" -m pip)
else
  pip=("$py" -m pip --python "$venv/bin/python")
fi
# --no-index: the machine has no network; --no-compile: byte-compiling all of transformers takes long, and only
# the imported modules are ever needed (Python compiles those on first import).
"${pip[@]}" install --disable-pip-version-check --no-index --no-cache-dir --no-compile "${dry_run[@]}" \
  "${links[@]}" "${pins[@]}"

[ ${#dry_run[@]} -eq 0 ] || exit 0
"$venv/bin/python" - <<'EOF'
import importlib
for name in ("torch", "transformers", "tokenizers", "safetensors", "huggingface_hub", "numpy"):
    try:
        m = importlib.import_module(name)
        print(f"[install-wheels]   {name:16s} {m.__version__:24s} {m.__file__}")
    except Exception as exc:  # torch missing means PYTHON was not the interpreter that holds it
        print(f"[install-wheels]   {name:16s} NOT IMPORTABLE: {exc}")
EOF
