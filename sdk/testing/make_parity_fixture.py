#!/usr/bin/env python3
"""A tiny random HF checkpoint and transformers' outputs on it, for `dschat plugin test LIB --model OUT_DIR`.

Installed with the dschat SDK (share/dschat/testing/). Works for any causal LM transformers knows: give it a
config.json of a tiny model of your family (a few layers, small width, vocab_size >= the tokenizer's).
Writes OUT_DIR/ with config.json, model.safetensors and reference.safetensors holding:
  input_ids, attention_mask   a left-padded batch [B, P]
  logits                      transformers' logits for it [B, P, V]
  step_ids, step_logits       tokens fed one at a time after the prompt through the KV cache, and their logits
  generated                   [B, P + new] transformers.generate, greedy
  min_margin                  smallest top-1 minus top-2 gap among the greedy steps (the seed is moved on
                              until it is >= 1e-3, so that greedy parity means something)
With --tokenizer DIR its tokenizer files are copied too, so the harness can also run a training stage.

Usage: make_parity_fixture.py CONFIG_JSON OUT_DIR [--tokenizer DIR] [--seed N] [--new-tokens N]
"""
import argparse
import inspect
import json
import os
import shutil

import torch
from safetensors.torch import save_file
import transformers

transformers.utils.logging.disable_progress_bar()
STEPS = 4


def randomize(model, seed):
    # Wider than HF's 0.02 init so that logits spread out and greedy choices are far from ties.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def make(config_dict, out_dir, seed, new_tokens):
    fields = dict(config_dict)
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    randomize(model, seed)
    parameters = inspect.signature(model.forward).parameters
    takes_positions = "position_ids" in parameters
    cache_key = "cache" if "cache" in parameters else "past_key_values"  # transformers 5.x renamed it
    pad = config.pad_token_id if config.pad_token_id is not None else 0

    def forward(ids, mask, cache=None):
        kwargs = dict(input_ids=ids, attention_mask=mask, use_cache=cache is not None)
        if cache is not None:
            kwargs[cache_key] = cache
        if takes_positions:  # what generate passes for left padding: cumsum - 1, padding at 0
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, -ids.shape[1]:]
        out = model(**kwargs)
        return out.logits, getattr(out, "cache", None) or getattr(out, "past_key_values", None)

    g = torch.Generator().manual_seed(seed + 1)
    lengths = [7, 4, 1]
    batch, prompt = len(lengths), max(lengths)
    low = 3 if config.vocab_size > 3 else 0
    ids = torch.full((batch, prompt), pad, dtype=torch.long)
    mask = torch.zeros((batch, prompt), dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, prompt - n:] = torch.randint(low, config.vocab_size, (n,), generator=g)
        mask[b, prompt - n:] = 1
    step_ids = torch.randint(low, config.vocab_size, (batch, STEPS), generator=g)
    with torch.no_grad():
        logits, _ = forward(ids, mask)
        _, cache = forward(ids, mask, transformers.DynamicCache(config=config))
        full_mask, step_logits = mask, []
        for s in range(STEPS):
            full_mask = torch.cat([full_mask, torch.ones((batch, 1), dtype=torch.long)], 1)
            step, cache = forward(step_ids[:, s:s + 1], full_mask, cache)
            step_logits.append(step[:, -1])
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                             min_new_tokens=0, eos_token_id=None, pad_token_id=pad, output_scores=True,
                             return_dict_in_generate=True)
    top2 = torch.stack(out.scores, 1).topk(2, dim=-1).values
    margin = float((top2[..., 0] - top2[..., 1]).min())
    model.save_pretrained(out_dir, safe_serialization=True)
    save_file({"input_ids": ids, "attention_mask": mask, "logits": logits.contiguous(), "step_ids": step_ids,
               "step_logits": torch.stack(step_logits, 1).contiguous(), "generated": out.sequences.contiguous(),
               "min_margin": torch.tensor(margin)}, os.path.join(out_dir, "reference.safetensors"))
    return margin


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config_json")
    parser.add_argument("out_dir")
    parser.add_argument("--tokenizer", help="folder whose tokenizer.json / tokenizer_config.json to copy")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with open(args.config_json) as f:
        config = json.load(f)
    if "model_type" not in config:
        raise SystemExit(f"{args.config_json}: no 'model_type'")
    os.makedirs(args.out_dir, exist_ok=True)
    seed = args.seed
    while (margin := make(config, args.out_dir, seed, args.new_tokens)) < 1e-3:  # a near tie: another seed
        seed += 1
    if args.tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if os.path.exists(os.path.join(args.tokenizer, name)):
                shutil.copy(os.path.join(args.tokenizer, name), args.out_dir)
    print(json.dumps({"out_dir": args.out_dir, "seed": seed, "min_margin": margin,
                      "transformers": transformers.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
