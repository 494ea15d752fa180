#!/usr/bin/env python3
"""Greedy generation speed of dschat's `kv-cache` plugin vs transformers' generate, measured in the same run.

An OPT-125m-shaped model (hidden 768, 12 layers, 12 heads, vocab 50272) with random weights, saved once with
save_pretrained so that both sides load identical weights. Left-padded random prompts (lengths between half and
all of --prompt), greedy decoding, no eos (every row makes --new tokens), fp32 and bf16. The two sides alternate
for --rounds rounds (a busy machine slows both alike); each keeps its best time. Each side is also timed with
one new token (prefill + one pick), so decode speed = batch * (new - 1) / (time(new) - time(1)). Prints decode
tokens/s and end-to-end tokens/s (batch * new / whole generate call, prefill included) for both, the speed-ups
dschat / transformers (> 1: dschat is faster) and the share of generated tokens that agree.

Usage: bench_generate.py [--build build] [--batches 8,32] [--prompt 256] [--new 256] [--quick]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import save_file
from transformers import OPTConfig, OPTForCausalLM


def prompts(batch, length, vocab):
    g = torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    lengths = torch.randint(max(1, length // 2), length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length).unsqueeze(0) >= (length - lengths).unsqueeze(1)).long()
    return ids.masked_fill(mask == 0, 1), mask


def transformers_run(model, ids, mask, new, iterations):
    """Best wall time (ms) of generate(new tokens) and the answers."""
    best, out = float("inf"), None
    with torch.no_grad():
        for i in range(iterations + 1):  # the first run warms up
            start = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                 pad_token_id=1)
            if i > 0:
                best = min(best, (time.perf_counter() - start) * 1e3)
    return best, out[:, ids.shape[1]:]


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=os.path.join(root, "build"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--dtypes", default="f32,bf16")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="batches 2,8, prompt 32, 32 new tokens, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.prompt, args.new, args.rounds = "2,8", 32, 32, 1
    driver = os.path.join(args.build, "bin", "bench_generate")
    plugins = os.path.join(args.build, "lib", "dschat", "plugins")
    for path in (driver, os.path.join(plugins, "libdschat-opt.so"), os.path.join(plugins, "libdschat-kv-cache.so")):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: build bench_generate, dschat_plugin_opt and dschat_plugin_kv-cache first")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = OPTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
                       vocab_size=50272, max_position_embeddings=2048, attn_implementation="sdpa",
                       pad_token_id=1, bos_token_id=2, eos_token_id=2)
    print(f"OPT-125m shape, random weights, prompt {args.prompt} (left-padded), {args.new} new tokens, greedy, "
          f"{args.threads} threads, best of {args.rounds} x {args.iterations}; torch {torch.__version__}")
    print(f"{'dtype':5} {'batch':>5} | {'decode tok/s: dschat':>20} {'HF':>7} {'speed-up':>9} | "
          f"{'end-to-end tok/s: dschat':>24} {'HF':>7} {'speed-up':>9} | {'tokens agree':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        OPTForCausalLM(config).save_pretrained(model_dir)
        for name, dtype in ((n, {"f32": torch.float32, "bf16": torch.bfloat16}[n]) for n in args.dtypes.split(",")):
            model = OPTForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
            model.generation_config.eos_token_id = None  # no early stop: both sides make every token
            for batch in (int(b) for b in args.batches.split(",")):
                ids, mask = prompts(batch, args.prompt, config.vocab_size)
                prompt_file = os.path.join(tmp, f"prompts-{batch}.safetensors")
                save_file({"input_ids": ids, "attention_mask": mask}, prompt_file)
                ours, ours_1, theirs, theirs_1 = (float("inf"),) * 4
                for _ in range(args.rounds):
                    out = subprocess.run([driver, plugins, model_dir, prompt_file, str(args.new), name,
                                          str(args.iterations), str(args.threads)], check=True, capture_output=True,
                                         text=True)
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    ours, ours_1 = min(ours, result["min_ms"]), min(ours_1, result["prefill_ms"])
                    theirs_1 = min(theirs_1, transformers_run(model, ids, mask, 1, args.iterations)[0])
                    ms, hf_tokens = transformers_run(model, ids, mask, args.new, args.iterations)
                    theirs = min(theirs, ms)
                agree = (torch.tensor(result["tokens"]) == hf_tokens).float().mean().item()
                decode = batch * (args.new - 1) * 1e3
                ours_dec, theirs_dec = decode / max(ours - ours_1, 1e-9), decode / max(theirs - theirs_1, 1e-9)
                e2e = batch * args.new * 1e3
                print(f"{name:5} {batch:5d} | {ours_dec:20.1f} {theirs_dec:7.1f} {ours_dec / theirs_dec:8.2f}x | "
                      f"{e2e / ours:24.1f} {e2e / theirs:7.1f} {theirs / ours:8.2f}x | {agree:12.1%}", flush=True)


if __name__ == "__main__":
    main()
