#!/usr/bin/env bash
# Fuzzes dschat's parsers of untrusted files with libFuzzer (clang, ASan + UBSan): tools/fuzz.sh [SECONDS] [TARGET...]
#   SECONDS  per target (default 60); TARGETs: safetensors tokenizer_json jsonl toml hf_config (default: all)
# Builds tests/fuzz/ into build-fuzz/ (or $DSCHAT_FUZZ_BUILD_DIR; not part of the normal build), runs each target
# for SECONDS on its corpus: build-fuzz/corpus/<target>, which keeps what earlier runs found, seeded from
# tests/fuzz/corpus/<target> and the repository's own files. Prints per target the seconds run, executions
# (libFuzzer's final stats) and findings, which land in build-fuzz/findings/<target>/ (crash-*, leak-*,
# timeout-*, oom-*). Exit status 1 if anything was found. Fix a finding, then copy its input to
# tests/data/fuzz-regressions/<target>/ where tests/unit/test_parser_limits.cpp replays it in the normal suite.
# Environment: DSCHAT_FUZZ_JOBS (build jobs, default 2), DSCHAT_FUZZ_ARGS (extra libFuzzer flags).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${DSCHAT_FUZZ_BUILD_DIR:-$root/build-fuzz}"
seconds="${1:-60}"
shift || true
all_targets=(safetensors tokenizer_json jsonl toml hf_config)
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "fuzz.sh: unknown target '$t' (${all_targets[*]})" >&2; exit 2; }
done
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: SECONDS must be a whole number, got '$seconds'" >&2; exit 2; }

# clang with libFuzzer and the sanitizer runtimes (Debian 12: clang-14 + libclang-rt-14-dev).
cxx="${DSCHAT_FUZZ_CXX:-}"
if [ -z "$cxx" ]; then
  for c in clang++-14 clang++; do command -v "$c" >/dev/null && { cxx="$(command -v "$c")"; break; }; done
fi
has_libfuzzer() {
  [ -n "$cxx" ] && echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' |
    "$cxx" -x c++ -fsanitize=fuzzer,address,undefined -o /dev/null - 2>/dev/null
}
if ! has_libfuzzer; then
  echo "[fuzz] installing clang-14 and libclang-rt-14-dev (libFuzzer, ASan, UBSan)"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends clang-14 libclang-rt-14-dev >/dev/null
  cxx=/usr/bin/clang++-14
  has_libfuzzer || { echo "fuzz.sh: $cxx cannot link -fsanitize=fuzzer,address,undefined" >&2; exit 1; }
fi
[ -d "$root/.venv" ] || "$root/tools/setup.sh"  # LibTorch comes from the project's virtual environment

mkdir -p "$build"
if [ ! -f "$build/build.ninja" ]; then
  cmake -S "$root/tests/fuzz" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" >"$build/configure.log" 2>&1 ||
    { cat "$build/configure.log"; exit 1; }
fi
ninja -C "$build" -j "${DSCHAT_FUZZ_JOBS:-2}" $(printf 'fuzz_%s ' "${targets[@]}")

# Seeds from the repository, besides the committed tests/fuzz/corpus/<target>.
extra_seeds() {
  case "$1" in
    tokenizer_json) ;;  # tests/data/tokenizers/* are ~90 KB each: the committed seeds are those, cut down
    toml) ls "$root"/configs/*.toml "$root"/tests/data/pipelines/*.toml 2>/dev/null ;;
    jsonl) ls "$root"/tests/data/pipelines/*.jsonl 2>/dev/null ;;
    hf_config) ls "$root"/tests/data/models/*/config.json 2>/dev/null ;;
  esac
}

# The targets write each input to a scratch file under $TMPDIR (one folder per process): keep those in the build.
export TMPDIR="$build/tmp"
mkdir -p "$TMPDIR"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
summary=()
status=0
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t" findings="$build/findings/$t" log="$build/logs/$t.log"
  mkdir -p "$corpus" "$findings" "$(dirname "$log")"
  cp -n "$root/tests/fuzz/corpus/$t"/* "$corpus"/ 2>/dev/null || true
  while read -r f; do [ -n "$f" ] && cp -n "$f" "$corpus/seed-$(basename "$(dirname "$f")")-$(basename "$f")"; done \
    < <(extra_seeds "$t")
  before=$(find "$findings" -type f | wc -l)
  echo "[fuzz] $t: ${seconds}s (log: $log)"
  start=$(date +%s)
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: LibTorch alone is ~500 MB.
  set +e
  (cd "$findings" && "$build/fuzz_$t" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 \
    -rss_limit_mb=4096 -artifact_prefix="$findings/" ${DSCHAT_FUZZ_ARGS:-} "$corpus") >"$log" 2>&1
  rc=$?
  set -e
  elapsed=$(($(date +%s) - start))
  rm -rf "${TMPDIR:?}"/dschat-fuzz-*
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$( (grep -o '^#[0-9]*' "$log" || true) | tail -1 | tr -d '#')
  found=$(($(find "$findings" -type f | wc -l) - before))
  if ((rc != 0 || found > 0)); then
    status=1
    ((found > 0)) || found="rc $rc"
    echo "[fuzz] $t: FOUND $found; the report:"
    if grep -qE "ERROR|runtime error|Test unit written" "$log"; then
      grep -E "ERROR|SUMMARY|runtime error|Test unit written|^ +#[0-9]+ 0x" "$log" | head -40
    else
      tail -20 "$log"
    fi
  fi
  summary+=("$(printf '%-15s %6ss %12s execs  findings: %s' "$t" "$elapsed" "${execs:-?}" "$found")")
done
echo "[fuzz] summary (seconds run, executions, findings; inputs in $build/findings/<target>/):"
printf '  %s\n' "${summary[@]}"
exit $status
