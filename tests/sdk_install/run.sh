#!/usr/bin/env bash
# Installs the SDK from the build folder, builds tests/sdk_install/hello against it with find_package(dschat),
# and checks that the installed host lists the plugin as ok.
set -euo pipefail
build="$1"; source_dir="$2"; torch_dir="$3"
work="$build/sdk-install-test"
rm -rf "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$source_dir/tests/sdk_install/hello" -B "$work/hello" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" \
      -DTorch_DIR="$torch_dir" >"$work/configure.log" 2>&1 || { cat "$work/configure.log"; exit 1; }
ninja -C "$work/hello" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
plugin="$work/hello/libdschat-hello.so"
table="$("$work/prefix/bin/dschat" plugins --path "$plugin")"
echo "$table"
echo "$table" | grep -E "^hook +step-counter +0\.0\.1 +ok +.*libdschat-hello\.so \(--path\)" >/dev/null
# The installed host also finds the in-tree plugins in its own default folder.
if ls "$work/prefix/lib/dschat/plugins/"*.so >/dev/null 2>&1; then
  echo "$table" | grep -E "\(default folder\)" >/dev/null
fi
echo "third-party plugin built against the installed SDK: ok"

# The same plugin built against changed SDK headers (one field added to an interface struct) is refused by the
# installed host, naming the mismatch, instead of being run with the wrong layout.
cp -r "$work/prefix" "$work/prefix-changed"
header="$work/prefix-changed/include/dschat/sdk/strategy.h"
sed -i 's/^struct StepResult {$/struct StepResult {\n  int field_added_by_the_test = 0;/' "$header"
grep -q field_added_by_the_test "$header" || { echo "could not change $header"; exit 1; }
cmake -S "$source_dir/tests/sdk_install/hello" -B "$work/hello-changed" -G Ninja \
      -DCMAKE_PREFIX_PATH="$work/prefix-changed" -DTorch_DIR="$torch_dir" >"$work/configure-changed.log" 2>&1 ||
  { cat "$work/configure-changed.log"; exit 1; }
ninja -C "$work/hello-changed" >"$work/build-changed.log" 2>&1 || { cat "$work/build-changed.log"; exit 1; }
table="$("$work/prefix/bin/dschat" plugins --path "$work/hello-changed/libdschat-hello.so")"
echo "$table"
echo "$table" | grep -E "rejected: build fingerprint differs: sdk_headers: expected [0-9a-f]{16}, found [0-9a-f]{16}" \
  >/dev/null || { echo "the plugin built against changed SDK headers was not refused"; exit 1; }
echo "plugin built against changed SDK headers: refused"

# `dschat plugin new` writes projects that build against the installed SDK and load as they are.
for kind in model strategy generation algorithm hook; do
  "$work/prefix/bin/dschat" plugin new --kind "$kind" "my-$kind" "$work/scaffold-$kind" >/dev/null
  cmake -S "$work/scaffold-$kind" -B "$work/scaffold-$kind/build" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" \
        -DTorch_DIR="$torch_dir" >"$work/configure-$kind.log" 2>&1 || { cat "$work/configure-$kind.log"; exit 1; }
  ninja -C "$work/scaffold-$kind/build" >"$work/build-$kind.log" 2>&1 || { cat "$work/build-$kind.log"; exit 1; }
  ctest --test-dir "$work/scaffold-$kind/build" --output-on-failure >"$work/ctest-$kind.log" 2>&1 ||
    { cat "$work/ctest-$kind.log"; exit 1; }
  echo "scaffolded $kind plugin: builds, loads"
done
# It refuses to write over a project.
if "$work/prefix/bin/dschat" plugin new --kind hook my-hook "$work/scaffold-hook" 2>"$work/refusal.log"; then
  echo "plugin new wrote over an existing project"; exit 1
fi
grep -q "exists and is not an empty folder" "$work/refusal.log"
