#!/usr/bin/env bash
# Installs everything dschat needs on a Debian 12 machine, then is a no-op on reruns.
#   - Debian packages: compiler, build tools, Boost (DLL + program_options), TOML++, fmt, GoogleTest, nlohmann-json,
#     libcurl + OpenSSL (Hub downloads), Open MPI + Slurm + munge (launcher tests), jemalloc (benchmarks only),
#     PLplot with its cairo driver (`dschat plot`)
#   - llama.cpp's Jinja engine sources for chat templates (tools/fetch_jinja.sh)
#   - a project-local virtual environment (.venv, ignored by git) holding the pinned torch wheel, whose
#     bundled LibTorch (headers, libraries, CMake package) is what the C++ build links against.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DSCHAT_VENV:-$root/.venv}"

apt_packages=(g++ cmake ninja-build ccache pkg-config python3 python3-venv
  libboost-dev libgloo-dev libboost-program-options-dev libboost-filesystem-dev
  libtomlplusplus-dev libfmt-dev libgtest-dev nlohmann-json3-dev
  libjemalloc2   # jemalloc: the LD_PRELOAD allocator rows of tools/bench/bench_generate.py
  libcurl4-openssl-dev libssl-dev   # HF Hub downloads (libcurl) and their sha256 / git-sha1 checks (OpenSSL)
  openmpi-bin slurm-wlm munge       # the real launchers the launcher tests start: mpirun, and srun on a one-node Slurm
  libplplot-dev plplot-driver-cairo) # `dschat plot`: PLplot draws the curves, its cairo driver writes PNG and SVG

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] apt: installing ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

req="$root/tools/requirements.txt"
stamp="$venv/.dschat-requirements"
if ! { [ -f "$stamp" ] && cmp -s "$req" "$stamp"; }; then
  if [ ! -x "$venv/bin/python" ]; then
    echo "[setup] creating virtual environment $venv"
    python3 -m venv "$venv"
  fi
  echo "[setup] pip: installing $(grep -v '^#' "$req" | tr '\n' ' ')"
  start=$(date +%s)
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  cp "$req" "$stamp"
  echo "[setup] python packages ready in $(( $(date +%s) - start ))s; venv size $(du -sh "$venv" | cut -f1)"
fi

# Chat templates are Jinja: llama.cpp's engine, from a pinned PyPI sdist (tools/fetch_jinja.sh says why).
"$root/tools/fetch_jinja.sh"
