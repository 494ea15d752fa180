#!/usr/bin/env bash
# Puts llama.cpp's Jinja engine (MIT; common/jinja plus the small common/json and common/unicode it needs) under
# .cache/third_party/llama-jinja, where CMake builds it into dschat_jinja for chat templates (`dschat chat`).
#
# Why this engine: HF chat templates are Jinja programs (loops, conditionals, filters, namespace()); a C++ runtime
# must run them, not pattern-match them. llama.cpp's engine is maintained against hundreds of real templates
# (models/templates/*.jinja upstream), depends on nothing but nlohmann-json, and marks text that came from the
# user so special tokens typed by a user are not read as control tokens.
#
# Where it comes from: only PyPI is reachable here, so the source is taken from the pinned llama-cpp-python sdist,
# which vendors llama.cpp; the archive's sha256 is checked. Nothing from it is imported or run at set-up time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
dest="$root/.cache/third_party/llama-jinja"
stamp="$dest/.dschat-version"
[ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ] && exit 0

python="${DSCHAT_VENV:-$root/.venv}/bin/python"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "[setup] fetching llama.cpp's Jinja engine from the llama-cpp-python==$version sdist"
"$python" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
  "llama-cpp-python==$version" -d "$tmp"
archive="$tmp/llama_cpp_python-$version.tar.gz"
echo "$sha256  $archive" | sha256sum -c --quiet - || { echo "[setup] $archive: sha256 mismatch" >&2; exit 1; }
prefix="llama_cpp_python-$version/vendor/llama.cpp"
tar -xzf "$archive" -C "$tmp" "$prefix/LICENSE" "$prefix/common/jinja" "$prefix/common/json.h" \
  "$prefix/common/json.cpp" "$prefix/common/unicode.h" "$prefix/common/unicode.cpp" "$prefix/vendor/nlohmann"
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
cp -r "$tmp/$prefix/LICENSE" "$tmp/$prefix/common" "$tmp/$prefix/vendor" "$dest.tmp/"
echo "$version" >"$dest.tmp/.dschat-version"
rm -rf "$dest"
mv -T "$dest.tmp" "$dest"
echo "[setup] llama.cpp Jinja engine ready in $dest"
