#!/usr/bin/env python3
"""Python's side of the Hub tests: the repositories the fake Hub serves, and what transformers does with a cache.

  hub_fixture.py repos OUT
      OUT/testorg/tiny-opt/      the quickstart's OPT (config + tokenizer) with seeded random weights, one
                                 model.safetensors
      OUT/testorg/tiny-sharded/  the same model saved in 3 shards with model.safetensors.index.json
  hub_fixture.py greedy REPO_ID PROMPT N
      with HF_ENDPOINT / HF_HUB_CACHE / HF_HUB_OFFLINE as given: transformers' from_pretrained(REPO_ID) (which,
      online, downloads into the cache with huggingface_hub's own code), then up to N greedy tokens for PROMPT,
      printed as JSON {"snapshot": folder, "ids": [...], "text": prompt + answer}.
"""
import json
import os
import shutil
import sys

import torch
import transformers

transformers.utils.logging.disable_progress_bar()
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART_MODEL = os.path.join(ROOT, "configs", "quickstart", "model")


def make_repos(out):
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(QUICKSTART_MODEL)
    config.init_std = 0.3  # OPT's init field; at its default 0.02 greedy answers repeat one token
    model = AutoModelForCausalLM.from_config(config).eval()
    for name, shard in (("tiny-opt", None), ("tiny-sharded", "600KB")):
        folder = os.path.join(out, "testorg", name)
        shutil.rmtree(folder, ignore_errors=True)
        kwargs = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(folder, **kwargs)
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(QUICKSTART_MODEL, file), folder)


def greedy(repo_id, prompt, count):
    tokenizer = AutoTokenizer.from_pretrained(repo_id)
    model = AutoModelForCausalLM.from_pretrained(repo_id).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=count, do_sample=False)
    answer = out[0, ids.shape[1]:].tolist()
    from huggingface_hub import snapshot_download
    snapshot = snapshot_download(repo_id, local_files_only=True)
    # `text` is what `dschat generate` prints: the prompt, then the answer without special tokens.
    print(json.dumps({"snapshot": snapshot, "ids": answer,
                      "text": prompt + tokenizer.decode(answer, skip_special_tokens=True)}))


if __name__ == "__main__":
    if sys.argv[1] == "repos":
        make_repos(sys.argv[2])
    elif sys.argv[1] == "greedy":
        greedy(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(__doc__)
