#!/usr/bin/env python3
"""Checkpoint loading: dschat's ModelFamily::from_pretrained vs transformers' from_pretrained, same folder.

Makes (once, cached in --work) a random OPT-1.3B-shaped checkpoint with transformers (fp16 safetensors,
~2.6 GB), then times each side in a fresh process, alternating, and prints the median of each and the ratio.
Only the load call is timed (not interpreter or library start-up). Usage:

    ninja -C build bench_load dschat_plugin_opt
    .venv/bin/python tools/bench/bench_load.py --build build [--rounds 3] [--dtype f16]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HF_LOAD = r"""
import sys, time, torch
from transformers import AutoModelForCausalLM
dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[sys.argv[2]]
start = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=dtype)
took = time.perf_counter() - start
print(took)
"""


def make_checkpoint(path):
    import torch
    from transformers import OPTConfig, OPTForCausalLM
    config = OPTConfig(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32,
                       vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=2048,
                       do_layer_norm_before=True, torch_dtype="float16")
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = OPTForCausalLM(config).to(torch.float16)
    model.save_pretrained(path, safe_serialization=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default="build")
    parser.add_argument("--work", default="/tmp/dschat-bench-load")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="f16", choices=["f32", "f16", "bf16"])
    args = parser.parse_args()

    model_dir = os.path.join(args.work, "opt-1.3b-random")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        print(f"making a random OPT-1.3B checkpoint in {model_dir} ...", flush=True)
        make_checkpoint(model_dir)
    size = sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir))
    driver = os.path.join(args.build, "bin", "bench_load")
    plugin = os.path.join(args.build, "lib", "dschat", "plugins", "libdschat-opt.so")

    dschat_s, hf_s = [], []
    for _ in range(args.rounds):
        out = subprocess.run([driver, plugin, model_dir, args.dtype], check=True, capture_output=True, text=True)
        dschat_s.append(json.loads(out.stdout)["load_s"])
        out = subprocess.run([sys.executable, "-c", HF_LOAD, model_dir, args.dtype], check=True,
                             capture_output=True, text=True)
        hf_s.append(float(out.stdout.strip().splitlines()[-1]))
    d, h = statistics.median(dschat_s), statistics.median(hf_s)
    print(f"checkpoint {size / 2**30:.2f} GiB, load into {args.dtype}, {args.rounds} rounds (median)")
    print(f"dschat from_pretrained       {d:8.3f} s   {dschat_s}")
    print(f"transformers from_pretrained {h:8.3f} s   {hf_s}")
    print(f"ratio (transformers / dschat): {h / d:.2f}x")


if __name__ == "__main__":
    main()
