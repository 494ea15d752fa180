#!/usr/bin/env python3
"""One PPO iteration at DeepSpeed-Chat's benchmark shape on one GPU: dschat against the same step in plain PyTorch +
transformers (tools/gpu/bench_ppo_baseline.py, DeepSpeed-Chat's ppo_trainer logic), measured in the same run.

    tools/gpu/bench_ppo_gpu.py DSCHAT --out DIR [--batches 64,32,16] [--rollouts 3] [--tiny --device cpu]

The shape (Blog-Apr23 Fig. 5/6): OPT-1.3B actor (+ frozen reference), OPT-350M critic (+ frozen reward model),
random weights, bf16 weights with fp32 masters, prompts padded to 256 tokens, answers of exactly 256 (eos
suppressed: min_new_tokens = max_new_tokens), sampling on. dschat runs `dschat run` on a PPO-only pipeline written
here (generation plugin `cuda`, `single` strategy, hybrid engine check on); the largest of --batches that runs is
taken, and the baseline runs at that batch. Each side's first rollout is warm-up; the median of the rest counts.

Figures per side: generation tokens/s, training TFLOPs, effective TFLOPs by DeepSpeed-Chat's utils/perf.py
(F = 24 k B s L h^2 (1 + s/6h + V/16Lh); generation k = 1 for the actor over s; training k = 3 for actor and
critic; effective = (gen + train FLOPs) / iteration time, experience forwards' time included), peak GPU memory,
and the shares of the bf16 peak (--peak-tflops, the datasheet's 989 for H100/H200 SXM by default).
"""
import argparse
import json
import pathlib
import shutil
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

SHAPES = {  # OPT-1.3B and OPT-350M as facebook/opt-* config.json give them
    "actor": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192, word_embed_proj_dim=2048,
                  do_layer_norm_before=True),
    "critic": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096, word_embed_proj_dim=512,
                   do_layer_norm_before=False),
}
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128, word_embed_proj_dim=64,
            do_layer_norm_before=True)


def perf_flops(k, batch, seq, shape, vocab):
    L, h = shape["num_hidden_layers"], shape["hidden_size"]
    return 24 * k * batch * seq * L * h ** 2 * (1.0 + seq / (6.0 * h) + vocab / (16.0 * L * h))


def model_folder(path: pathlib.Path, shape: dict, vocab: int):
    path.mkdir(parents=True, exist_ok=True)
    config = dict(model_type="opt", architectures=["OPTForCausalLM"], vocab_size=vocab, max_position_embeddings=2048,
                  activation_function="relu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
                  init_std=0.02, enable_bias=True, layer_norm_elementwise_affine=True, pad_token_id=1,
                  bos_token_id=2, eos_token_id=2, torch_dtype="bfloat16", **shape)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json"):  # the quickstart's byte-level BPE (640 ids < vocab)
        shutil.copy(ROOT / "configs" / "quickstart" / "model" / name, path / name)


def prompts_file(path: pathlib.Path, rows: int, prompt_len: int):
    # Prompts as long as the prompt budget allows (dschat, like DeepSpeed-Chat, drops longer ones): the quickstart's
    # requests strung together, grown request by request while they still fit in prompt_len tokens.
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(ROOT / "configs/quickstart/model/tokenizer.json"))
    lines = [json.loads(line) for line in (ROOT / "configs/quickstart/data/requests.jsonl").read_text().splitlines()]
    with path.open("w") as f:
        for i in range(rows):
            text, j = "", 0
            while True:
                longer = text + lines[(i + j) % len(lines)]["prompt"]
                if len(tokenizer.encode(longer).ids) + 2 > prompt_len:
                    break
                text, j = longer, j + 1
            r = lines[i % len(lines)]
            f.write(json.dumps({"prompt": text, "response": r["chosen"], "chosen": r["chosen"],
                                "rejected": r["rejected"]}) + "\n")


def pipeline(out: pathlib.Path, batch: int, args) -> pathlib.Path:
    seq = args.prompt + args.answer
    text = f'''[pipeline]
name = "ppo-bench-b{batch}"
output_dir = "{out.as_posix()}/run-b{batch}"
seed = 1
device = "{args.device}"

[models.actor]
path = "{(out / "actor").as_posix()}"
init = "random"
dtype = "{args.dtype}"

[models.critic]
path = "{(out / "critic").as_posix()}"
init = "random"
dtype = "{args.dtype}"

[data]
datasets = ["{(out / "prompts.jsonl").as_posix()}"]
split = [1, 1, 8]
eval_fraction = 0.02
max_seq_len = {seq}
max_prompt_seq_len = {args.prompt}

[strategy]
plugin = "single"

[[stage]]                         # one step, only to give the random critic a value head (not timed)
name = "rm"
algorithm = "reward"
model = "critic"
max_steps = 1
per_device_train_batch_size = 2
per_device_eval_batch_size = 2

[[stage]]
name = "rlhf"
algorithm = "ppo"
actor = "actor"
critic = "rm"
max_steps = {args.rollouts}
per_device_generation_batch_size = {batch}
per_device_training_batch_size = {batch}
trim_prompt_padding = false       # every prompt {args.prompt} tokens wide, as DeepSpeed-Chat pads them
eval_prompts = 2
per_device_eval_batch_size = 2
save_critic = false
num_warmup_steps = 0
generation = {{ plugin = "{args.generator}", max_new_tokens = {args.answer}, min_new_tokens = {args.answer}, do_sample = true }}
'''
    path = out / f"ppo-b{batch}.toml"
    path.write_text(text)
    return path


def metrics(stage_dir: pathlib.Path) -> dict:
    by_tag = {}
    for line in (stage_dir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_tag.setdefault(row["tag"], {})[row["step"]] = row["value"]
    return by_tag


def run_dschat(args, out: pathlib.Path):
    for batch in [int(b) for b in args.batches.split(",")]:
        toml = pipeline(out, batch, args)
        log = out / f"dschat-b{batch}.log"
        with log.open("w") as f:
            rc = subprocess.run([args.dschat, "run", str(toml)], stdout=f, stderr=subprocess.STDOUT).returncode
        tail = log.read_text()[-1500:]
        if rc != 0:
            print(f"dschat batch {batch}: exit {rc}; tail of {log}:\n{tail}")
            continue
        m = metrics(out / f"run-b{batch}" / "rlhf")
        steps = sorted(m["time/generation_s"])
        counted = steps[1:] or steps
        med = {k: statistics.median(m[f"time/{k}_s"][s] for s in counted) for k in ("generation", "experience", "training")}
        peak = max(m.get("memory/peak_gpu_bytes", {0: 0}).values())
        return batch, med, peak, m
    return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dschat")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--batches", default="64,32,16")
    parser.add_argument("--rollouts", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--answer", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--generator", default="cuda")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU check of this script)")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    vocab = 50272
    shapes = {k: (TINY if args.tiny else v) for k, v in SHAPES.items()}
    for role in ("actor", "critic"):
        model_folder(out / role, shapes[role], vocab)
    prompts_file(out / "prompts.jsonl", 2000, args.prompt)

    found = run_dschat(args, out)
    if found is None:
        print("dschat: no batch ran")
        return 1
    batch, med, peak, m = found
    seq = args.prompt + args.answer
    gen_flops = perf_flops(1, batch, seq, shapes["actor"], vocab)
    train_flops = perf_flops(3, batch, seq, shapes["actor"], vocab) + perf_flops(3, batch, seq, shapes["critic"], vocab)
    total = med["generation"] + med["experience"] + med["training"]
    rows = {"dschat": dict(batch=batch, generate_s=med["generation"], experience_s=med["experience"],
                           train_s=med["training"], total_s=total, peak_memory_bytes=peak)}
    if not args.no_baseline:
        base_json = out / "baseline.json"
        cmd = [sys.executable, str(ROOT / "tools/gpu/bench_ppo_baseline.py"), "--batch", str(batch),
               "--prompt-len", str(args.prompt), "--answer-len", str(args.answer), "--iterations", str(args.rollouts),
               "--device", args.device, "--dtype", args.dtype, "--json", str(base_json)] + (["--tiny"] if args.tiny else [])
        with (out / "baseline.log").open("w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc == 0:
            b = json.loads(base_json.read_text())
            rows["PyTorch + transformers"] = dict(batch=b["batch"], generate_s=b["generate_s"],
                                                  experience_s=b["experience_s"], train_s=b["train_s"],
                                                  total_s=b["total_s"], peak_memory_bytes=b["peak_memory_bytes"] or 0)
        else:
            print(f"baseline failed ({rc}); tail:\n{(out / 'baseline.log').read_text()[-1500:]}")

    print(f"PPO iteration, batch {batch}, {args.prompt} + {args.answer} tokens, {args.dtype}, one GPU "
          f"(median of rollouts after the first):")
    print(f"  {'side':<24} {'gen s':>7} {'exp s':>7} {'train s':>8} {'iter s':>7} {'gen tok/s':>10} "
          f"{'train TF':>9} {'eff TF':>8} {'of peak':>8} {'peak GiB':>9}")
    for name, r in rows.items():
        eff = (gen_flops + train_flops) / r["total_s"] / 1e12
        print(f"  {name:<24} {r['generate_s']:7.2f} {r['experience_s']:7.2f} {r['train_s']:8.2f} {r['total_s']:7.2f} "
              f"{batch * args.answer / r['generate_s']:10.0f} {train_flops / r['train_s'] / 1e12:9.1f} {eff:8.1f} "
              f"{eff / args.peak_tflops:8.1%} {r['peak_memory_bytes'] / 2 ** 30:9.1f}")
        r.update(effective_tflops=eff, train_tflops=train_flops / r["train_s"] / 1e12,
                 gen_tokens_per_s=batch * args.answer / r["generate_s"])
    if len(rows) == 2:
        print(f"  dschat / baseline iteration time: {rows['PyTorch + transformers']['total_s'] / rows['dschat']['total_s']:.2f}x")
    print(f"  work: both sides generate {batch} x {args.answer} tokens after a {args.prompt}-token prompt, run "
          f"actor/reference/critic/reward forwards over {seq} tokens, and one actor + one critic AdamW step; "
          "dschat's first micro-batch reuses its "
          "experience forwards for training (reuse_experience_forwards) and checks generation against training "
          "log-probs on 2 rows (the hybrid engine's check)")
    (out / "ppo.json").write_text(json.dumps({"batch": batch, "gen_flops": gen_flops, "train_flops": train_flops,
                                              "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
