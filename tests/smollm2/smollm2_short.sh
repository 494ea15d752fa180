#!/usr/bin/env bash
# configs/smollm2.toml shortened (a few optimizer steps per stage) on the real SmolLM2-135M-Instruct: every stage
# completes with finite metrics, the trained folders work with `generate`, `chat` and `eval reward`, and `chat`
# speaks to the original model through its own chat template. The full run's figures are in the README.
#   smollm2_short.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$1"
src="$2"
dschat="$build/bin/dschat"
model="$src/.cache/models/SmolLM2-135M-Instruct"
out="$build/test-output/smollm2-short"

"$src/tools/fetch_smollm2.sh" "$model"
rm -rf "$out"
start=$(date +%s)
"$dschat" run "$src/configs/smollm2.toml" --set "pipeline.output_dir=\"$out\"" \
  --set stage.sft.max_steps=3 --set stage.rm.max_steps=3 --set stage.rlhf.max_steps=2 \
  --set stage.rlhf.eval_prompts=8 --set stage.rlhf.generation.max_new_tokens=32
echo "[smollm2_short] pipeline ran in $(( $(date +%s) - start ))s"
for stage in sft rm rlhf; do
  [ -f "$out/$stage/final/COMPLETE" ] || { echo "FAIL: $stage/final is not complete" >&2; exit 1; }
done
[ -f "$out/rlhf/ema/config.json" ] || { echo "FAIL: no EMA model" >&2; exit 1; }
"$src/.venv/bin/python" - "$out" <<'PY'
import json, math, sys
for stage in ("sft", "rm", "rlhf"):
    rows = [json.loads(line) for line in open(f"{sys.argv[1]}/{stage}/metrics.jsonl")]
    bad = [r for r in rows if not math.isfinite(r["value"])]
    assert rows and not bad, f"{stage}: {len(rows)} metrics, non-finite: {bad[:3]}"
    tags = {r["tag"] for r in rows}
    need = {"sft": "eval/perplexity", "rm": "eval/accuracy", "rlhf": "eval/reward"}[stage]
    assert need in tags, f"{stage}: no {need} in {sorted(tags)}"
print("[smollm2_short] metrics finite in every stage")
PY

# The original model, through its ChatML template: a known answer.
answer=$(printf 'What is the capital of France?\nquit\n' | "$dschat" chat --greedy --max-new-tokens 16 --model "$model")
echo "[smollm2_short] chat (original): $answer"
grep -q "assistant> The capital of France is Paris." <<<"$answer" || { echo "FAIL: unexpected chat answer" >&2; exit 1; }

# The PPO folder chats in DeepSpeed-Chat's format (it has no template: dschat trains in that format). A few steps
# teach little, so only the plumbing is checked here; the full run's answers are in the README.
answer=$(printf 'What is the capital of France?\n' | "$dschat" chat --greedy --max-new-tokens 24 --model "$out/rlhf/final")
echo "[smollm2_short] chat (after PPO): $answer"
grep -qE "^assistant> .*[A-Za-z]{2}" <<<"$answer" || { echo "FAIL: no answer from the PPO folder" >&2; exit 1; }

scores=$("$dschat" eval reward --model "$out/rm/final" --data "$src/configs/smollm2/data/concise.jsonl" --limit 16 \
  --max-seq-len 128 2>/dev/null)
echo "$scores"
grep -q "^accuracy: " <<<"$scores" || { echo "FAIL: eval reward printed no accuracy" >&2; exit 1; }
echo "[smollm2_short] ok"
