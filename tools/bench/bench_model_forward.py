#!/usr/bin/env python3
"""Forward-pass time of dschat's OPT plugin vs transformers, measured in the same run.

An OPT-125m-shaped model (hidden 768, 12 layers, 12 heads, vocab 50272) with random weights, batch 4 x 128
tokens, no KV cache, fp32 and bf16. The two sides alternate for --rounds rounds (so a busy machine slows both
alike) and each side's best time is kept. Prints milliseconds per forward and the ratio dschat / transformers
(< 1: dschat is faster).

Usage: bench_model_forward.py [--build build] [--threads N] [--iterations N] [--batch 4] [--tokens 128]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from transformers import OPTConfig, OPTForCausalLM


def transformers_ms(model, config, batch, tokens, iterations):
    ids = torch.randint(3, config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    times = []
    with torch.no_grad():
        for i in range(iterations + 1):  # the first run warms up
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().abs().mean().item()
            if i > 0:
                times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=os.path.join(root, "build"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    driver = os.path.join(args.build, "bin", "bench_forward")
    plugin = os.path.join(args.build, "lib", "dschat", "plugins", "libdschat-opt.so")
    for path in (driver, plugin):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: build the bench_forward and dschat_plugin_opt targets first")

    torch.set_num_threads(args.threads)
    config = OPTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
                       vocab_size=50272, max_position_embeddings=2048, attn_implementation="sdpa")
    print(f"OPT-125m shape, batch {args.batch} x {args.tokens} tokens, {args.threads} threads, best of "
          f"{args.rounds} x {args.iterations}; torch {torch.__version__}")
    print(f"{'dtype':6} {'dschat ms':>10} {'transformers ms':>16} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        config_file = os.path.join(tmp, "config.json")
        config.to_json_file(config_file)
        for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
            model = OPTForCausalLM(config).to(dtype).eval()
            ours, theirs = float("inf"), float("inf")
            for _ in range(args.rounds):
                out = subprocess.run([driver, plugin, config_file, str(args.batch), str(args.tokens), name,
                                      str(args.iterations), str(args.threads)], check=True, capture_output=True,
                                     text=True)
                ours = min(ours, json.loads(out.stdout.strip().splitlines()[-1])["min_ms"])
                theirs = min(theirs, transformers_ms(model, config, args.batch, args.tokens, args.iterations))
            print(f"{name:6} {ours:10.1f} {theirs:16.1f} {ours / theirs:7.2f}")


if __name__ == "__main__":
    main()
