#!/usr/bin/env python3
"""Greedy decode on the GPU: dschat's `cuda` plugin (static KV cache, CUDA graph) and `kv-cache` plugin against
transformers' generate (static and dynamic cache), as shares of the HBM-bandwidth bound, in the same run.

    tools/gpu/bench_decode.py PACK_DIR [--batches 1,8] [--prompt 256] [--new 128] [--out decode.json]

The model: OPT-1.3B-shaped (DeepSpeed-Chat's actor), random weights, bf16, saved once with save_pretrained so both
sides load identical weights. Prompts: random ids, left-padded rows (row 0 full length). No eos: every row makes
--new tokens. Decode tokens/s = batch * (new - 1) / (t(new) - t(1)) per side (prefill and the first pick split off).
The bound: bytes one decode step must read (every weight once: all parameters except the position-embedding
lookup, the tied LM head read once; plus the KV cache at the mean length) over the device-to-device copy bandwidth
measured here (bytes read + written per second), and over the datasheet's 4.8 TB/s.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def copy_bandwidth() -> float:
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")  # 1 GiB, far beyond L2
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * 20 / (time.perf_counter() - start)


def make_model(folder: pathlib.Path):
    from transformers import OPTConfig, OPTForCausalLM
    config = OPTConfig(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192, vocab_size=50272,
                       max_position_embeddings=2048, word_embed_proj_dim=2048, torch_dtype="bfloat16")
    if not (folder / "model.safetensors").exists():
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = OPTForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(folder, safe_serialization=True)
        del model
    return config


def hf_rows(folder, ids, mask, new, iterations):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    out = {}
    for cache in ("static", "dynamic"):
        def run(tokens):
            kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=1)
            if cache == "static":
                kwargs["cache_implementation"] = "static"
            best = float("inf")
            for i in range(iterations + 1):
                torch.cuda.synchronize()
                start = time.perf_counter()
                seq = model.generate(input_ids=ids.cuda(), attention_mask=mask.cuda(), **kwargs)
                torch.cuda.synchronize()
                if i > 0:
                    best = min(best, time.perf_counter() - start)
            return best, seq
        t1, _ = run(1)
        tn, seq = run(new)
        out[f"HF generate, {cache} cache"] = {"t1": t1, "tn": tn, "tokens": seq[:, ids.shape[1]:].cpu().tolist()}
    del model
    torch.cuda.empty_cache()
    return out


def dschat_row(pack, folder, prompts, new, iterations, plugin):
    env = dict(os.environ)
    cmd = [str(pack / "bin" / "bench_generate"), str(pack / "lib" / "dschat" / "plugins"), str(folder), str(prompts),
           str(new), "bf16", str(iterations), "4", "cuda", plugin]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"bench_generate {plugin}: {result.stderr[-1500:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    if result.stderr.strip():
        print(f"  [{plugin}] {result.stderr.strip().splitlines()[-1]}")
    return {"t1": row["prefill_ms"] / 1e3, "tn": row["min_ms"] / 1e3, "tokens": row["tokens"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("pack", type=pathlib.Path)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--folder", type=pathlib.Path, default=pathlib.Path("/tmp/dschat-opt-1.3b-bf16"))
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()
    from safetensors.torch import save_file

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    bandwidth = copy_bandwidth()
    config = make_model(args.folder)
    from safetensors import safe_open
    weight_bytes = 0
    with safe_open(args.folder / "model.safetensors", "pt") as f:
        for name in f.keys():
            if "embed_positions" in name:
                continue  # a lookup of one row per token
            shape = f.get_slice(name).get_shape()
            n = 1
            for d in shape:
                n *= d
            weight_bytes += 2 * n
    print(f"copy bandwidth measured {bandwidth / 1e12:.2f} TB/s (read + written); weights read per step "
          f"{weight_bytes / 1e9:.2f} GB")
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(3, config.vocab_size, (batch, args.prompt), generator=g)
        mask = torch.ones_like(ids)
        for r in range(1, batch):
            pad = int(torch.randint(0, args.prompt // 2, (1,), generator=g))
            mask[r, :pad] = 0
            ids[r, :pad] = 1
        prompts = args.folder.parent / f"dschat-prompts-b{batch}.safetensors"
        save_file({"input_ids": ids, "attention_mask": mask}, str(prompts))
        kv_bytes = 2 * config.num_hidden_layers * (args.prompt + args.new / 2) * config.hidden_size * 2 * batch
        step_bytes = weight_bytes + kv_bytes
        rows = {}
        for plugin in ("cuda", "kv-cache"):
            try:
                rows[f"dschat {plugin}"] = dschat_row(args.pack, args.folder, prompts, args.new, args.iterations, plugin)
            except Exception as e:  # report and go on: the other rows still count
                print(f"  dschat {plugin}: {e}")
        rows.update(hf_rows(args.folder, ids, mask, args.new, args.iterations))
        reference = rows.get("HF generate, dynamic cache", {}).get("tokens")
        print(f"batch {batch}, prompt {args.prompt} + {args.new} new, bytes per step {step_bytes / 1e9:.2f} GB:")
        print(f"  {'side':<28} {'decode tok/s':>12} {'step ms':>8} {'of copy BW':>10} {'of 4.8 TB/s':>11} {'tokens = HF':>11}")
        for name, row in rows.items():
            step_s = (row["tn"] - row["t1"]) / (args.new - 1)
            tps = batch / step_s
            share = step_bytes / step_s / bandwidth
            spec = step_bytes / step_s / 4.8e12
            same = "-" if reference is None else f"{sum(a == b for a, b in zip(row['tokens'], reference))}/{batch}"
            print(f"  {name:<28} {tps:12.1f} {step_s * 1e3:8.3f} {share:10.1%} {spec:11.1%} {same:>11}")
            results.append({"batch": batch, "side": name, "decode_tokens_per_s": tps, "step_ms": step_s * 1e3,
                            "share_of_copy_bandwidth": share, "share_of_datasheet": spec})
    if args.out:
        args.out.write_text(json.dumps({"copy_bandwidth": bandwidth, "weight_bytes": weight_bytes, "rows": results},
                                       indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
