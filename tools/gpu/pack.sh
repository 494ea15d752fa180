#!/usr/bin/env bash
# Builds the CUDA configuration here and packs what tools/gpu/check.sh runs on the GPU machine into build-gpu-pack/
# (ignored by git; carried to the GPU machine with the `device` tool's carry = ["build-gpu-pack"], 64 MiB at most).
#
#   tools/gpu/pack.sh            # then: run check.sh there with carry ["build-gpu-pack"]
#
# The GPU machine has torch 2.11.0+cu130 (the same LibTorch this build links) but not Boost, TOML++, libcurl's
# friends or PLplot, and it cannot install anything. So the pack holds, stripped of debug info:
#   bin/      dschat, test_cuda, bench_generate
#   lib/      libdschat_*.so and lib/dschat/plugins/ (the layout dschat finds its plugins in)
#   deps/     every shared library those need that is neither LibTorch's / CUDA's (the machine's torch provides
#             them) nor the C runtime's (glibc, libstdc++, libgcc_s: the machine's newer ones serve)
#   test-data/models/  the transformers fixtures test_cuda compares against (made here by test_models)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${DSCHAT_CUDA_BUILD_DIR:-$root/build-cuda}"
cpu_build="${DSCHAT_BUILD_DIR:-$root/build}"
pack="$root/build-gpu-pack"

if [ ! -f "$build/build.ninja" ]; then
  DSCHAT_BUILD_DIR="$build" "$root/tools/build.sh" -DDSCHAT_CUDA=ON
else
  DSCHAT_BUILD_DIR="$build" "$root/tools/build.sh"
fi
ninja -C "$build" bench_generate  # benchmarks are built on request only
fixtures="$cpu_build/test-data/models"
if [ ! -f "$fixtures/llama/reference.safetensors" ]; then
  echo "[pack] making the model fixtures (test_models' generator) in $fixtures"
  mkdir -p "$fixtures"
  "$root/.venv/bin/python" "$root/tools/make_model_fixtures.py" "$fixtures" >"$fixtures/make.log" 2>&1
fi

rm -rf "$pack"
mkdir -p "$pack/bin" "$pack/lib/dschat/plugins" "$pack/deps" "$pack/test-data"
cp "$build/bin/dschat" "$build/bin/test_cuda" "$build/bin/bench_generate" "$pack/bin/"
cp "$build"/lib/libdschat_*.so "$pack/lib/"
cp "$build"/lib/dschat/plugins/*.so "$pack/lib/dschat/plugins/"
cp -r "$fixtures" "$pack/test-data/models"
rm -f "$pack/test-data/models/make.log"

# Shared libraries to carry: what ldd resolves outside LibTorch / CUDA / the C runtime.
skip='/(torch|nvidia)/|libcuda\.so|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|ld-linux|libstdc\+\+|libgcc_s|libresolv|libutil\.so|linux-vdso|libdschat'
for f in "$pack"/bin/* "$pack"/lib/*.so "$pack"/lib/dschat/plugins/*.so; do
  ldd "$f" | awk '/=> \// {print $3}'
done | sort -u | grep -Ev "$skip" | while read -r lib; do cp -L "$lib" "$pack/deps/"; done

find "$pack" -name '*.so*' -o -path "$pack/bin/*" | while read -r f; do
  [ -f "$f" ] && file "$f" | grep -q ELF && strip --strip-debug "$f"
done
echo "[pack] $pack: $(du -sh "$pack" | cut -f1) ($(ls "$pack/deps" | wc -l) carried libraries: $(ls "$pack/deps" | tr '\n' ' '))"
size_kb=$(du -sk "$pack" | cut -f1)
if [ "$size_kb" -gt $((60 * 1024)) ]; then
  echo "[pack] warning: over 60 MiB; the device tool carries 64 MiB at most, the tree included" >&2
fi
