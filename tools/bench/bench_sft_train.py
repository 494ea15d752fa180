#!/usr/bin/env python3
"""SFT training throughput of dschat's engine vs an equivalent transformers + PyTorch loop, in the same run.

An OPT-125m-shaped model (hidden 768, 12 layers, 12 heads, vocab 50272) with random weights and no dropout,
batch 2 x 128 tokens. One training step on both sides: forward, causal-LM loss (fp32 logits), backward, clip the
grad norm to 1.0, AdamW (betas 0.9/0.95, eps 1e-8) in DeepSpeed-Chat's decay / no-decay groups, cosine
schedule, zero grads. bf16 on both sides means bf16 weights trained through fp32 master weights (what
dschat's engine and DeepSpeed's bf16 optimizer do): the Python loop copies gradients to fp32 masters, steps
them and copies back. The two sides alternate for --rounds rounds (a busy machine slows both alike); each side
keeps its best median step time. Prints tokens/s and the ratio dschat / transformers (> 1: dschat is faster).

Usage: bench_sft_train.py [--build build] [--threads N] [--steps N] [--rounds N] [--batch 2] [--tokens 128]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch
from transformers import OPTConfig, OPTForCausalLM

NO_DECAY = ["bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight"]


class PythonLoop:
    """The step DeepSpeed-Chat runs on one process, written as plain transformers + torch.optim."""

    def __init__(self, config, dtype, steps, fused=False):
        torch.manual_seed(0)
        self.model = OPTForCausalLM(config).to(dtype).train()
        self.params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.mixed = dtype != torch.float32
        self.masters = [p.detach().float().clone() if self.mixed else p for _, p in self.params]
        decay = [m for (n, _), m in zip(self.params, self.masters) if not any(k in n.lower() for k in NO_DECAY)]
        no_decay = [m for (n, _), m in zip(self.params, self.masters) if any(k in n.lower() for k in NO_DECAY)]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=1e-5, betas=(0.9, 0.95), eps=1e-8, fused=fused or None)
        total = steps + 1
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: max(0.0, 0.5 * (1.0 + math.cos(math.pi * s / max(1, total)))))

    def step(self, ids, mask):
        logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                                 ids[:, 1:].reshape(-1))
        loss.backward()
        if self.mixed:
            for (_, p), m in zip(self.params, self.masters):
                m.grad = p.grad.float()
        torch.nn.utils.clip_grad_norm_(self.masters, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            if self.mixed:
                for (_, p), m in zip(self.params, self.masters):
                    p.copy_(m)
        for (_, p), m in zip(self.params, self.masters):
            p.grad = None
            m.grad = None
        return loss.item()


def python_median_ms(loop, config, batch, tokens, steps):
    ids = torch.randint(3, config.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    times = []
    for i in range(steps + 1):  # the first step warms up and creates the Adam state
        start = time.perf_counter()
        loop.step(ids, mask)
        if i > 0:
            times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=os.path.join(root, "build"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="f32,bf16")
    parser.add_argument("--python-fused", action="store_true",
                        help="give the Python loop torch.optim.AdamW(fused=True), the kernel dschat's engine uses "
                             "(default: AdamW's defaults, as an ordinary training script has them)")
    args = parser.parse_args()
    driver = os.path.join(args.build, "bin", "bench_sft")
    plugin = os.path.join(args.build, "lib", "dschat", "plugins", "libdschat-opt.so")
    for path in (driver, plugin):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: build the bench_sft and dschat_plugin_opt targets first")

    torch.set_num_threads(args.threads)
    config = OPTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
                       vocab_size=50272, max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0,
                       activation_dropout=0.0, attn_implementation="sdpa")
    tokens = args.batch * args.tokens
    print(f"SFT train step, OPT-125m shape, batch {args.batch} x {args.tokens} tokens, {args.threads} threads, "
          f"best of {args.rounds} rounds x median of {args.steps} steps; python AdamW "
          f"{'fused' if args.python_fused else 'default'}; torch {torch.__version__}")
    print(f"{'dtype':6} {'dschat tok/s':>13} {'python tok/s':>13} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        config_file = os.path.join(tmp, "config.json")
        config.to_json_file(config_file)
        for name in args.dtypes.split(","):
            dtype = torch.bfloat16 if name == "bf16" else torch.float32
            ours, theirs = float("inf"), float("inf")
            for _ in range(args.rounds):
                out = subprocess.run([driver, plugin, config_file, str(args.batch), str(args.tokens), name,
                                      str(args.steps), str(args.threads)], check=True, capture_output=True, text=True)
                ours = min(ours, json.loads(out.stdout.strip().splitlines()[-1])["median_ms"])
                loop = PythonLoop(config, dtype, args.steps, fused=args.python_fused)
                theirs = min(theirs, python_median_ms(loop, config, args.batch, args.tokens, args.steps))
                del loop
            ours_tps, theirs_tps = tokens / (ours / 1e3), tokens / (theirs / 1e3)
            print(f"{name:6} {ours_tps:13.1f} {theirs_tps:13.1f} {ours_tps / theirs_tps:7.2f}", flush=True)


if __name__ == "__main__":
    main()
