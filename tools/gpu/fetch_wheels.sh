#!/usr/bin/env bash
# Downloads the wheels that tools/gpu/install_wheels.sh installs offline on a GPU machine that has torch but not
# the HF stack (or an older one): transformers, tokenizers and safetensors as tools/requirements.txt pins them,
# plus everything they need, for Linux x86_64 CPython. torch, nvidia-* and the packages that come with torch are
# left out: the machine's own are used (the venv install_wheels.sh makes sees them).
#
# Layout under .cache/gpu-wheels/ (git-ignored), so that only what a machine needs has to be carried:
#   common/       pure-Python and abi3 wheels (any CPython 3.x)
#   cp3XX/        that CPython's own binary wheels, numpy excepted (regex, pyyaml, pydantic-core, ...)
#   numpy-cp3XX/  numpy for that CPython: ~16 MB each, needed only where the machine has no numpy at all
#                 (install_wheels.sh does not pin numpy, so a numpy already there is kept)
#
# The GPU image's Python is not known for sure (3.12 when last seen), so wheels for every version in
# PY_VERSIONS are fetched: default "3.11 3.12", since transformers 5.24.0 (and numpy 2.4) need Python >= 3.11.
# Re-running is a no-op while the stamp matches.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dest="$root/.cache/gpu-wheels"
py_versions="${PY_VERSIONS:-3.11 3.12}"
pins=(transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0 numpy==2.4.6)
# Installed with torch itself (its Requires-Dist), so never carried.
torch_deps='^(filelock|typing_extensions|sympy|networkx|jinja2|fsspec|markupsafe|mpmath|setuptools|torch|triton|nvidia_.*|cuda_.*)$'
stamp_text="${pins[*]} | $py_versions"
stamp="$dest/.stamp"

report() {
  du -sh "$dest"/* | sed 's/^/  /'
  echo "[gpu-wheels] total $(du -sh "$dest" | cut -f1) in $dest ($(find "$dest" -name '*.whl' | wc -l) wheels)"
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_text" ]; then
  echo "[gpu-wheels] already present ($stamp_text)"
  report
  exit 0
fi

python="${DSCHAT_VENV:-$root/.venv}/bin/python"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp/common"
for v in $py_versions; do
  tag="cp${v/./}"
  echo "[gpu-wheels] resolving for CPython $v (manylinux x86_64)"
  # Each platform tag is matched exactly, so list the manylinux levels wheels are published for; the resolver
  # also evaluates markers for this version (tomli for 3.10, say).
  "$python" -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --python-version "$v" --implementation cp --abi "$tag" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
    --platform manylinux1_x86_64 --platform any \
    -d "$tmp/$tag" "${pins[@]}"
  mkdir -p "$dest.tmp/$tag" "$dest.tmp/numpy-$tag"
  for whl in "$tmp/$tag"/*.whl; do
    file="$(basename "$whl")"
    name="$(echo "${file%%-*}" | tr 'A-Z-' 'a-z_')"
    if [[ "$name" =~ $torch_deps ]]; then continue; fi
    case "$file" in
      numpy-*) cp -n "$whl" "$dest.tmp/numpy-$tag/" ;;
      *-none-any.whl | *-abi3-*) cp -n "$whl" "$dest.tmp/common/" ;;  # the same file for every version
      *) cp -n "$whl" "$dest.tmp/$tag/" ;;
    esac
  done
done
echo "$stamp_text" >"$dest.tmp/.stamp"
rm -rf "$dest"
mv -T "$dest.tmp" "$dest"
report
