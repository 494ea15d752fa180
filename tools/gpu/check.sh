#!/usr/bin/env bash
# The GPU check: everything dschat claims on a GPU, in one call of the `device` tool (under 8 minutes on one H200).
#
#   here:   tools/gpu/pack.sh                       # CUDA build + its runtime libraries -> build-gpu-pack/ (< 64 MiB)
#   there:  run(command="tools/gpu/check.sh", carry=["build-gpu-pack"], timeout_s=540)
#
# It uses the machine's own python3 (torch 2.11.0+cu130, transformers) for the baselines and the machine's LibTorch
# for dschat (the same version it was built against). Logs and figures go under $OUT (default gpu-check-out/):
# summary.txt first, then one log per step. Steps go on after a failure, each under its own time limit, so one
# broken part never hides the figures of the others.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
OUT="${OUT:-$root/gpu-check-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
pack="${DSCHAT_GPU_PACK:-$root/build-gpu-pack}"
py="${PYTHON:-python3}"
summary="$OUT/summary.txt"
: >"$summary"
t0=$(date +%s)

say() { echo "$*" | tee -a "$summary"; }
# step NAME SECONDS COMMAND...: runs it with its output in $OUT/NAME.log, records rc and time, shows the tail.
step() {
  local name="$1" limit="$2"
  shift 2
  local start=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local tenths=$(( ($(date +%s%N) - start) / 100000000 ))
  say "$(printf '%-22s rc=%-3s %4d.%d s  (%s)' "$name" "$rc" $((tenths / 10)) $((tenths % 10)) "$([ $rc = 0 ] && echo ok || { [ $rc = 124 ] && echo "TIMED OUT after ${limit}s" || echo FAILED; })")"
  tail -n "${TAIL:-6}" "$OUT/$name.log" | sed 's/^/    /' | tee -a "$summary"
  return 0
}

say "dschat GPU check, $(date -u +%FT%TZ), tree $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
  "$py" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  "$py" -c 'import transformers; print("transformers", transformers.__version__)' 2>&1 | tail -1
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
} 2>&1 | tee -a "$summary"

[ -x "$pack/bin/dschat" ] || { say "no pack at $pack: run tools/gpu/pack.sh here and carry build-gpu-pack"; exit 1; }
torch_lib="$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
nvidia_libs="$("$py" - <<'EOF'
import glob, os, site
dirs = []
for base in site.getsitepackages():
    dirs += sorted(d for d in glob.glob(os.path.join(base, "nvidia", "**", "lib"), recursive=True) if os.path.isdir(d))
print(":".join(dirs))
EOF
)"
export LD_LIBRARY_PATH="$pack/lib:$pack/deps:$torch_lib:$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export DSCHAT_MODEL_FIXTURES="$pack/test-data/models" DSCHAT_TEST_MODEL_PLUGINS="$pack/lib/dschat/plugins"
dschat="$pack/bin/dschat"

step version 30 "$dschat" --version
step test_cuda 90 "$pack/bin/test_cuda" --gtest_output="json:$OUT/test_cuda.json"
# The quickstart on the GPU, then its SFT stage under ZeRO-3 (one rank: gathers and partitions are local) against
# the single-process engine: the same losses.
step quickstart 120 "$dschat" run configs/quickstart.toml --set pipeline.device=cuda \
  --set "pipeline.output_dir=$OUT/quickstart"
step zero3_vs_single 90 "$py" tools/gpu/zero3_vs_single.py "$dschat" "$OUT/zero3"
# Decode at batch 1 (and 8) against the HBM-bandwidth bound, beside transformers' generate.
step decode 120 "$py" tools/gpu/bench_decode.py "$pack" --out "$OUT/decode.json"
# One PPO iteration at DeepSpeed-Chat's benchmark shape (OPT-1.3B actor + OPT-350M critic, 256 + 256, bf16) beside
# the same step in plain PyTorch + transformers.
TAIL=25 step ppo_bench 240 "$py" tools/gpu/bench_ppo_gpu.py "$dschat" --out "$OUT/ppo"
say "total $(( $(date +%s) - t0 )) s; logs in $OUT"
