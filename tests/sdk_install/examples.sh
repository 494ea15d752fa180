#!/usr/bin/env bash
# The two out-of-tree examples against an installed dschat, as a third party builds them: install the build to a
# temporary prefix, build examples/gpt-neox and examples/orpo with find_package(dschat) only and run their tests
# (GPT-NeoX parity with transformers through `dschat plugin test`, ORPO's hand-worked losses), check that the
# installed `dschat plugins` lists both with where it found them, then run examples/rlhf-gpt-neox-orpo.toml
# (SFT, RM, PPO + EMA on GPT-NeoX, then ORPO) under single, and under torchrun with ddp and ZeRO-3.
set -euo pipefail
build="$1"; source_dir="$2"; torch_dir="$3"
work="$build/sdk-examples-test"
python="$source_dir/.venv/bin/python"
rm -rf "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
dschat="$work/prefix/bin/dschat"

for example in gpt-neox orpo; do
  cmake -S "$source_dir/examples/$example" -B "$work/$example" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" \
        -DTorch_DIR="$torch_dir" -DDSCHAT_TEST_PYTHON="$python" >"$work/configure-$example.log" 2>&1 ||
    { cat "$work/configure-$example.log"; exit 1; }
  ninja -C "$work/$example" >"$work/build-$example.log" 2>&1 || { cat "$work/build-$example.log"; exit 1; }
  ctest --test-dir "$work/$example" --output-on-failure >"$work/ctest-$example.log" 2>&1 ||
    { cat "$work/ctest-$example.log"; exit 1; }
  echo "examples/$example: built against the installed SDK, its tests pass"
done
# The parity figures, for the record.
grep -h "PASS  logits match\|PASS  greedy" "$work"/gpt-neox/Testing/Temporary/LastTest.log | sed 's/^/  /'

export DSCHAT_PLUGIN_PATH="$work/gpt-neox:$work/orpo"
table="$("$dschat" plugins)"
echo "$table" | grep -E "^model +gpt_neox +0\.1\.0 +ok +$work/gpt-neox/libdschat-gpt-neox\.so \(DSCHAT_PLUGIN_PATH\)" \
  >/dev/null || { echo "$table"; echo "gpt_neox is not listed as found via DSCHAT_PLUGIN_PATH"; exit 1; }
echo "$table" | grep -E "^algorithm +orpo +0\.1\.0 +ok +$work/orpo/libdschat-orpo\.so \(DSCHAT_PLUGIN_PATH\)" \
  >/dev/null || { echo "$table"; echo "orpo is not listed as found via DSCHAT_PLUGIN_PATH"; exit 1; }
echo "$table" | grep -E "^model +llama .*\(default folder\)" >/dev/null || { echo "$table"; exit 1; }
echo "dschat plugins lists gpt_neox and orpo (DSCHAT_PLUGIN_PATH) beside the built-in plugins (default folder)"

# The pipeline's folder: the tiny GPT-NeoX the parity test made (weights + the SDK's tokenizer) and the SDK's data.
run_pipeline() {  # NAME LAUNCHER... -- SET...
  local name="$1"; shift
  local dir="$work/pipeline-$name"
  mkdir -p "$dir/data"
  cp -r "$work/gpt-neox/fixtures/pythia" "$dir/model"
  cp "$work/prefix/share/dschat/testing/data/requests.jsonl" "$dir/data/"
  cp "$source_dir/examples/rlhf-gpt-neox-orpo.toml" "$dir/pipeline.toml"
  (cd "$dir" && "$@" >"$dir/run.log" 2>&1) || { tail -40 "$dir/run.log"; echo "pipeline under $name failed"; exit 1; }
  for stage in sft rm rlhf orpo; do
    [ -f "$dir/run/$stage/final/config.json" ] || { echo "$name: stage $stage wrote no final model"; exit 1; }
  done
  [ -f "$dir/run/rlhf/ema/config.json" ] || { echo "$name: PPO's EMA was not written"; exit 1; }
  echo "SFT, RM, PPO + EMA on GPT-NeoX, then ORPO, under $name: every stage wrote its model" \
       "(sft eval/loss $(grep -o '"tag":"eval/loss","time":[0-9.e+]*,"value":[0-9.e+-]*' "$dir/run/sft/metrics.jsonl" |
                         tail -1 | sed 's/.*"value"://'))"
}
run_pipeline single "$dschat" run pipeline.toml
torchrun="$source_dir/.venv/bin/torchrun"
if [ -x "$torchrun" ]; then
  launch=("$torchrun" --standalone --nproc-per-node 2 --no-python "$dschat" run pipeline.toml)
  OMP_NUM_THREADS=1 run_pipeline ddp "${launch[@]}" --set 'strategy.plugin="ddp"'
  OMP_NUM_THREADS=1 run_pipeline zero3 "${launch[@]}" --set 'strategy.plugin="zero"' --set strategy.stage=3
  # Same global batch, same data order: ddp and ZeRO-3 agree on the SFT result.
  loss() { grep -o '"tag":"eval/loss","time":[0-9.e+]*,"value":[0-9.e+-]*' "$work/pipeline-$1/run/sft/metrics.jsonl" |
           tail -1 | sed 's/.*"value"://'; }
  "$python" -c "import sys; a, b = map(float, sys.argv[1:]); sys.exit(abs(a - b) > 1e-4 * abs(a))" "$(loss ddp)" \
    "$(loss zero3)" || { echo "ddp and zero3 SFT eval losses differ: $(loss ddp) vs $(loss zero3)"; exit 1; }
else
  echo "no torchrun at $torchrun: the ddp and ZeRO-3 runs are skipped"
fi
echo "out-of-tree examples: ok"
