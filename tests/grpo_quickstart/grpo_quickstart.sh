#!/usr/bin/env bash
# configs/grpo-quickstart.toml with one GRPO epoch, then the same stage as rloo: the SFT model's greedy answers are
# mostly wrong (it learned the data's slips) and after the critic-free stage most held-out answers are right, as
# eval/reward (the exact-answer reward: held-out accuracy) shows; the stage writes its final model.
#   grpo_quickstart.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$1"
src="$2"
for algorithm in grpo rloo; do
  out="$build/test-output/grpo-quickstart-$algorithm"
  rm -rf "$out"
  "$build/bin/dschat" run "$src/configs/grpo-quickstart.toml" --set "pipeline.output_dir=\"$out\"" \
    --set stage.grpo.epochs=1 --set "stage.grpo.algorithm=\"$algorithm\"" > "$out.log" 2>&1 ||
    { tail -30 "$out.log" >&2; echo "FAIL: $algorithm pipeline" >&2; exit 1; }
  [ -f "$out/grpo/final/COMPLETE" ] || { echo "FAIL: $algorithm: grpo/final is not complete" >&2; exit 1; }
  "$src/.venv/bin/python" - "$out/grpo/metrics.jsonl" "$algorithm" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
acc = [r["value"] for r in rows if r["tag"] == "eval/reward"]
print(f"[grpo_quickstart] {sys.argv[2]}: held-out accuracy {acc[0]:.2f} after SFT, {acc[-1]:.2f} after {sys.argv[2]}")
assert acc[0] <= 0.4, f"the SFT model should mostly repeat the data's slips, its accuracy is {acc[0]}"
assert acc[-1] >= acc[0] + 0.4, f"{sys.argv[2]} did not raise the held-out accuracy: {acc}"
tags = {r["tag"] for r in rows}
for tag in ("reward/mean", "actor/loss", "kl/mean", "rollout/zero_signal_groups", "actor/clip_fraction"):
    assert tag in tags, f"no {tag} in {sorted(tags)}"
PY
done
