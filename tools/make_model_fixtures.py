#!/usr/bin/env python3
"""Tiny random HF checkpoints + transformers' reference outputs for the model parity tests.

Seeded and deterministic. For each variant writes <out>/<variant>/ holding config.json, model.safetensors and
reference.safetensors with:
  input_ids, attention_mask   a left-padded batch [B, P]
  logits                      transformers' logits for it [B, P, V]
  step_ids                    [B, S] tokens fed one at a time after the prompt, through the KV cache
  step_logits                 [B, S, V] the logits of each of those steps
  generated                   [B, P + 32] transformers.generate greedy, 32 new tokens
  min_margin                  [] smallest top-1 minus top-2 logit gap among the greedy steps (ties would make
                              the comparison meaningless; the script reseeds until it is comfortable)

Usage: make_model_fixtures.py OUT_DIR [--variants opt,opt350m,...]
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file
import transformers
transformers.utils.logging.disable_progress_bar()
from transformers import AutoModelForCausalLM, BloomConfig, LlamaConfig, OPTConfig

VOCAB = 300
NEW_TOKENS = 32
STEPS = 4


def variants():
    common = dict(vocab_size=VOCAB, num_hidden_layers=2, pad_token_id=1, bos_token_id=2, eos_token_id=2)
    return {
        "opt": lambda: OPTConfig(hidden_size=64, num_attention_heads=4, ffn_dim=128, max_position_embeddings=128,
                                 do_layer_norm_before=True, **common),
        # opt-350m layout: post-LN blocks, no final norm, embeddings projected 32 <-> 64
        "opt350m": lambda: OPTConfig(hidden_size=64, num_attention_heads=4, ffn_dim=128,
                                     max_position_embeddings=128, do_layer_norm_before=False,
                                     word_embed_proj_dim=32, **common),
        # 6 heads: not a power of two, so ALiBi takes the extra-slopes branch
        "bloom": lambda: BloomConfig(hidden_size=48, n_head=6, n_layer=2, vocab_size=VOCAB, pad_token_id=1,
                                     bos_token_id=2, eos_token_id=2),
        # LLaMA-3 style: grouped-query attention, untied head, rope_theta 500000
        "llama": lambda: LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=256, rope_theta=500000.0,
                                     tie_word_embeddings=False, rms_norm_eps=1e-5, **common),
        # LLaMA-3.1 rope scaling (tiny original context so all three frequency bands occur), tied head, biases
        "llama3_scaled": lambda: LlamaConfig(
            hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1,
            max_position_embeddings=256, tie_word_embeddings=True, attention_bias=True,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
            **common),
        "llama_linear": lambda: LlamaConfig(
            hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=256, tie_word_embeddings=False,
            rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}, **common),
    }


def randomize(model, seed):
    # Larger than HF's 0.02 init so logits are spread out and greedy choices are far from ties.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or "layernorm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def position_ids(mask):
    # What transformers.generate passes: cumsum - 1, padding at 0.
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def forward(model, kind, ids, mask, cache=None):
    kwargs = dict(input_ids=ids, attention_mask=mask, use_cache=cache is not None)
    if cache is not None:
        kwargs["cache"] = cache
    if kind != "bloom":
        kwargs["position_ids"] = position_ids(mask)[:, -ids.shape[1]:]
    out = model(**kwargs)
    new_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return out.logits, new_cache


def make(name, build_config, out_dir, seed):
    kind = "bloom" if name.startswith("bloom") else ("opt" if name.startswith("opt") else "llama")
    torch.manual_seed(seed)
    config = build_config()
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    randomize(model, seed)

    g = torch.Generator().manual_seed(seed + 1)
    lengths = [7, 4, 1]
    batch, prompt = len(lengths), max(lengths)
    ids = torch.full((batch, prompt), config.pad_token_id, dtype=torch.long)
    mask = torch.zeros((batch, prompt), dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, prompt - n:] = torch.randint(3, VOCAB, (n,), generator=g)
        mask[b, prompt - n:] = 1
    step_ids = torch.randint(3, VOCAB, (batch, STEPS), generator=g)

    with torch.no_grad():
        logits, _ = forward(model, kind, ids, mask)
        _, cache = forward(model, kind, ids, mask, cache=transformers.DynamicCache(config=config))
        full_mask = mask
        step_logits = []
        for s in range(STEPS):
            full_mask = torch.cat([full_mask, torch.ones((batch, 1), dtype=torch.long)], 1)
            step, cache = forward(model, kind, step_ids[:, s:s + 1], full_mask, cache=cache)
            step_logits.append(step[:, -1])
        step_logits = torch.stack(step_logits, 1)
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW_TOKENS,
                             min_new_tokens=0, eos_token_id=None, pad_token_id=config.pad_token_id,
                             output_scores=True, return_dict_in_generate=True)
    scores = torch.stack(out.scores, 1)  # [B, 32, V]
    top2 = scores.topk(2, dim=-1).values
    margin = (top2[..., 0] - top2[..., 1]).min()
    assert out.sequences.shape[1] == prompt + NEW_TOKENS, out.sequences.shape

    folder = os.path.join(out_dir, name)
    model.save_pretrained(folder, safe_serialization=True)
    save_file({"input_ids": ids, "attention_mask": mask, "logits": logits.contiguous(), "step_ids": step_ids,
               "step_logits": step_logits.contiguous(), "generated": out.sequences.contiguous(),
               "min_margin": margin.reshape(()).float()}, os.path.join(folder, "reference.safetensors"))
    return float(margin)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--variants", default=",".join(variants()))
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = variants()
    summary = {}
    for i, name in enumerate(args.variants.split(",")):
        if name not in table:
            sys.exit(f"unknown variant {name!r} (known: {', '.join(table)})")
        seed = 1000 + 17 * i
        margin = make(name, table[name], args.out_dir, seed)
        while margin < 1e-3:  # a near tie: pick another seed so greedy parity means something
            seed += 1
            margin = make(name, table[name], args.out_dir, seed)
        summary[name] = {"seed": seed, "min_margin": margin}
    with open(os.path.join(args.out_dir, "fixtures.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__, "variants": summary}, f,
                  indent=2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
