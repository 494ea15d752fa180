#!/usr/bin/env python3
"""One PPO iteration (DeepSpeed-Chat step 3) of `dschat run` vs a plain PyTorch + transformers PPO, in the same run.

TRL is not in the pinned .venv (and is not installed for this), so the baseline is DeepSpeed-Chat's
ppo_trainer.py written out as plain PyTorch on transformers models, one process, no DeepSpeed:

  generation  actor.generate(do_sample=True, top_k=50, use_cache=True, min_new_tokens = max_new_tokens = --new)
              in eval mode, then DeepSpeed-Chat's drop of rows whose answer has <= 1 token
  experience  attention_mask = (seq != pad); with no_grad, in train mode: actor forward -> old log-probs, ref
              forward -> ref log-probs, reward model (OPTModel + Linear(h, 1, bias=False)) -> score at the last
              answer token, critic (same shape) -> values[:, :-1]
  training    compute_rewards (kl_ctl 0.1, clip_reward_value 5), GAE (gamma 1, lambda 0.95); actor forward, clipped
              policy loss (0.2), backward, clip grad norm 1.0, AdamW (betas 0.9/0.95, eps 1e-8, lr 9.65e-6, cosine
              schedule with 100 warm-up steps), zero grad; critic forward, clipped value loss (0.2), backward, clip,
              AdamW (lr 5e-6), zero grad

torch.optim.AdamW gets torch's defaults on CPU (fused=False, foreach=False: the per-tensor loop an ordinary
training script runs); --python-fused gives it fused=True (the kernel class dschat's engine uses).

The dschat side is `build/bin/dschat run` of a generated pipeline: [models.sft] and [models.rm] (the folders
below, fp32), no SFT/RM stages, one `ppo` stage with actor = "sft", critic = "rm" (reference and reward default
to them), per_device_generation_batch_size = per_device_training_batch_size = --batch, ppo_epochs 1,
generation_batches 1, max_steps = --iterations (one rollout and one actor + critic step per iteration),
generation = kv-cache with the same sampling (top_k 50, min_new_tokens = max_new_tokens = --new), no held-out
prompts (no eval), no EMA hook, save_critic false. Its per-iteration phase times are the stage's metrics
time/generation_s, time/experience_s, time/training_s (stage_dir/metrics.jsonl). dschat's experience phase also
includes its generation-vs-training log-probs consistency check (a training-path forward of
consistency_sample_rows = 2 rows), which DeepSpeed-Chat does not have; it is left on, as dschat runs by default.

Both sides load the same weights: two random OPT models (--shape; actor/reference = "sft", critic/reward = "rm")
written once with save_pretrained, the rm folder in dschat's reward-model layout (value_head.safetensors with
v_head.weight [1, hidden] + reward_model.json), both with the quickstart byte-level BPE tokenizer
(configs/quickstart/model; bos = eos = pad = id 0, as the quickstart's OPT). For the 50272-token shapes the
tokenizer only encodes the prompts (its ids are < 640); sampled ids cover the model's whole vocabulary. Prompts
are texts that this tokenizer encodes to exactly --prompt tokens (BOS included), so no row is padded on either
side, and both sides make exactly --new answer tokens per row (eos is suppressed until then): the same shapes,
the same work. Dropout is 0 (DeepSpeed-Chat's scripts disable it). Both sides run fp32 on --threads threads
(torch.set_num_threads here; OMP_NUM_THREADS / MKL_NUM_THREADS for dschat).

Each side runs --iterations iterations; the first is warm-up (allocator, Adam state creation) and is printed
separately. The table keeps, per phase, the fastest of the other iterations (over --rounds rounds, in which the two
sides alternate: a busy machine slows both alike), and for "iteration" the fastest whole iteration; every
iteration's total is printed too. Ratios are python / dschat (> 1: dschat is faster).

Shapes (--shape): 125m = OPT-125m (hidden 768, 12 layers, 12 heads, ffn 3072, vocab 50272); small = hidden 512,
6 layers, 8 heads, ffn 2048, vocab 50272; tiny = the quickstart model (hidden 128, 2 layers, 4 heads, ffn 512,
vocab 640).

Usage (from the repository root, after tools/build.sh):
  .venv/bin/python tools/bench/bench_ppo.py [--build build] [--shape 125m|small|tiny] [--batch 4] [--prompt 32]
      [--new 32] [--iterations 3] [--rounds 1] [--threads N] [--python-fused] [--keep DIR]
"""
import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import save_file, load_file
from tokenizers import Tokenizer
from transformers import OPTConfig, OPTForCausalLM, OPTModel
from transformers.utils import logging as hf_logging

SHAPES = {
    "125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072, vocab_size=50272),
    "small": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, ffn_dim=2048, vocab_size=50272),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, ffn_dim=512, vocab_size=640),
}
PHASES = ("generation", "experience", "training")
PAD = 0  # the quickstart tokenizer's <|endoftext|>: bos = eos = pad, as DeepSpeed-Chat sets pad = eos
NO_DECAY = ["bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight"]

# DeepSpeed-Chat's PPO constants (dschat's defaults too).
KL_CTL, CLIP_REWARD, CLIPRANGE, CLIPRANGE_VALUE, GAMMA, LAM = 0.1, 5.0, 0.2, 0.2, 1.0, 0.95
ACTOR_LR, CRITIC_LR, WARMUP, MAX_GRAD_NORM = 9.65e-6, 5e-6, 100, 1.0
TOP_K = 50  # transformers' generate default, which DeepSpeed-Chat's sampling gets


# ---------------------------------------------------------------------------------------------------------------
# The model folders, prompts and pipeline, written once.

def write_models(root, shape, tokenizer_dir):
    config = OPTConfig(**SHAPES[shape], word_embed_proj_dim=SHAPES[shape]["hidden_size"],
                       max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                       layerdrop=0.0, pad_token_id=PAD, bos_token_id=PAD, eos_token_id=PAD,
                       attn_implementation="sdpa")
    dirs = {}
    for seed, name in ((0, "sft"), (1, "rm")):
        torch.manual_seed(seed)
        model = OPTForCausalLM(config)
        path = os.path.join(root, name)
        model.save_pretrained(path)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(tokenizer_dir, f), path)
        if name == "rm":  # dschat's reward-model layout (sdk/src/reward_model.cpp)
            head = torch.randn(1, config.hidden_size) * (1.0 / math.sqrt(config.hidden_size))
            save_file({"v_head.weight": head.contiguous()}, os.path.join(path, "value_head.safetensors"),
                      metadata={"format": "pt"})
            with open(os.path.join(path, "reward_model.json"), "w") as out:
                json.dump({"pad_token_id": PAD, "num_padding_at_beginning": 1}, out)
        dirs[name] = path
        del model
    return config, dirs


def make_prompts(tokenizer, count, length, seed=0):
    """`count` distinct texts that encode (BOS included) to exactly `length` tokens, and their ids."""
    words = ("the a of to and in is you that it for on with as what how why when can do my your please tell me "
             "about write short story poem list explain give name best good bad day night cold hot water food "
             "friend help question answer").split()
    rng = random.Random(seed)
    texts, ids = [], []
    while len(texts) < count:
        body = []
        while True:  # add words until the text reaches the length; keep it only if it lands exactly on it
            text = " Human: " + " ".join(body) + " Assistant:"
            encoded = tokenizer.encode(text).ids
            if len(encoded) >= length:
                break
            body.append(rng.choice(words))
        if len(encoded) == length and text not in texts:
            texts.append(text)
            ids.append(encoded)
    return texts, torch.tensor(ids, dtype=torch.long)


def write_pipeline(root, dirs, args):
    with open(os.path.join(root, "prompts.jsonl"), "w") as out:
        for text in args.prompt_texts:
            out.write(json.dumps({"prompt": text, "response": " Fine.", "chosen": " Good.", "rejected": " Bad."}) + "\n")
    toml = f"""# Written by tools/bench/bench_ppo.py
[pipeline]
name = "bench-ppo"
output_dir = "run"
seed = 1234

[models.sft]
path = "{dirs['sft']}"
dtype = "fp32"

[models.rm]
path = "{dirs['rm']}"
dtype = "fp32"

[data]
datasets = ["prompts.jsonl"]
split = [0, 0, 1]
eval_fraction = 0.0
max_seq_len = {args.prompt + args.new}
max_prompt_seq_len = {args.prompt}

[[stage]]
name = "ppo"
algorithm = "ppo"
actor = "sft"
critic = "rm"
epochs = 1
max_steps = {args.iterations}
per_device_generation_batch_size = {args.batch}
per_device_training_batch_size = {args.batch}
generation_batches = 1
ppo_epochs = 1
save_critic = false
generation = {{ plugin = "kv-cache", max_new_tokens = {args.new}, min_new_tokens = {args.new}, do_sample = true, top_k = {TOP_K} }}
"""
    path = os.path.join(root, "bench.toml")
    with open(path, "w") as out:
        out.write(toml)
    return path


# ---------------------------------------------------------------------------------------------------------------
# dschat

def dschat_run(dschat, toml, root, threads):
    run_dir = os.path.join(root, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.perf_counter()
    proc = subprocess.run([dschat, "run", toml], cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"dschat run failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    per_step = {}
    with open(os.path.join(run_dir, "ppo", "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            tag = row["tag"]
            if tag.startswith("time/") and tag.endswith("_s"):
                per_step.setdefault(row["step"], {})[tag[len("time/"):-len("_s")]] = float(row["value"])
    return [per_step[s] for s in sorted(per_step)], wall


# ---------------------------------------------------------------------------------------------------------------
# The plain PyTorch PPO: DeepSpeed-Chat's ppo_trainer.py (DeepSpeedPPOTrainer) without DeepSpeed.

def gather_log_probs(logits, labels):
    log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
    return log_probs.gather(dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)


class RewardModel(torch.nn.Module):
    """DeepSpeed-Chat's utils/model/reward_model.py: base transformer + v_head, scores at the answer's end."""

    def __init__(self, path):
        super().__init__()
        self.rwtransformer = OPTModel.from_pretrained(path, dtype=torch.float32)
        hidden = self.rwtransformer.config.word_embed_proj_dim
        self.v_head = torch.nn.Linear(hidden, 1, bias=False)
        self.v_head.weight.data.copy_(load_file(os.path.join(path, "value_head.safetensors"))["v_head.weight"])

    def forward_value(self, input_ids, attention_mask, return_value_only=False, prompt_length=0, use_cache=False):
        hidden = self.rwtransformer(input_ids, attention_mask=attention_mask, use_cache=use_cache)[0]
        values = self.v_head(hidden).squeeze(-1)
        if return_value_only:
            return values
        seq_len = input_ids.shape[1]
        scores = []
        for i in range(values.size(0)):
            c_inds = (input_ids[i, prompt_length:] == PAD).nonzero()
            c_ind = c_inds[0].item() + prompt_length if len(c_inds) > 0 else seq_len
            scores.append(values[i, c_ind - 1])
        return {"values": values, "chosen_end_scores": torch.stack(scores)}


def adamw(model, lr, fused):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if not any(k in n.lower() for k in NO_DECAY)]
    no_decay = [p for n, p in named if any(k in n.lower() for k in NO_DECAY)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=True if fused else None)
    total = 1000

    def cosine(step):
        if step < WARMUP:
            return step / max(1, WARMUP)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (step - WARMUP) / max(1, total - WARMUP))))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, cosine)


class PlainPPO:
    def __init__(self, dirs, fused):
        self.actor = OPTForCausalLM.from_pretrained(dirs["sft"], dtype=torch.float32)
        self.actor.generation_config.eos_token_id = PAD
        self.ref = OPTForCausalLM.from_pretrained(dirs["sft"], dtype=torch.float32)
        self.critic = RewardModel(dirs["rm"])
        self.reward = RewardModel(dirs["rm"])
        for frozen in (self.ref, self.reward):
            frozen.eval()
            for p in frozen.parameters():
                p.requires_grad_(False)
        self.actor_opt, self.actor_sched = adamw(self.actor, ACTOR_LR, fused)
        self.critic_opt, self.critic_sched = adamw(self.critic, CRITIC_LR, fused)

    # ---- generate_experience ----
    def generate(self, prompts, mask, new, seed):
        self.actor.eval()
        torch.manual_seed(seed)
        with torch.no_grad():
            seq = self.actor.generate(input_ids=prompts, attention_mask=mask, do_sample=True, top_k=TOP_K, top_p=1.0,
                                      temperature=1.0, max_new_tokens=new, min_new_tokens=new, pad_token_id=PAD,
                                      eos_token_id=PAD, use_cache=True)
        # DeepSpeed-Chat: keep rows whose answer has more than one non-pad token
        valid = (seq[:, prompts.shape[1]:] != PAD).sum(1) > 1
        return seq[valid]

    def experience(self, prompts, seq):
        self.actor.train()
        self.critic.train()
        attention_mask = seq.not_equal(PAD).long()
        with torch.no_grad():
            logits = self.actor(seq, attention_mask=attention_mask).logits
            logits_ref = self.ref(seq, attention_mask=attention_mask).logits
            reward_score = self.reward.forward_value(seq, attention_mask,
                                                     prompt_length=prompts.shape[1])["chosen_end_scores"].detach()
            values = self.critic.forward_value(seq, attention_mask, return_value_only=True).detach()[:, :-1]
        return {"prompts": prompts, "logprobs": gather_log_probs(logits[:, :-1, :], seq[:, 1:]),
                "ref_logprobs": gather_log_probs(logits_ref[:, :-1, :], seq[:, 1:]), "value": values,
                "rewards": reward_score, "input_ids": seq, "attention_mask": attention_mask}

    # ---- train_rlhf ----
    @staticmethod
    def compute_rewards(prompts, log_probs, ref_log_probs, reward_score, action_mask):
        rewards = -KL_CTL * (log_probs - ref_log_probs)
        start = prompts.shape[1] - 1
        ends = start + action_mask[:, start:].sum(1) + 1
        reward_clip = torch.clamp(reward_score, -CLIP_REWARD, CLIP_REWARD)
        for j in range(log_probs.shape[0]):
            rewards[j, start:ends[j]][-1] += reward_clip[j]
        return rewards

    @staticmethod
    def advantages_and_returns(values, rewards, start):
        lastgaelam = 0
        advantages_reversed = []
        length = rewards.size()[-1]
        for t in reversed(range(start, length)):
            nextvalues = values[:, t + 1] if t < length - 1 else 0.0
            delta = rewards[:, t] + GAMMA * nextvalues - values[:, t]
            lastgaelam = delta + GAMMA * LAM * lastgaelam
            advantages_reversed.append(lastgaelam)
        advantages = torch.stack(advantages_reversed[::-1], dim=1)
        return advantages.detach(), advantages + values[:, start:]

    @staticmethod
    def actor_loss_fn(logprobs, old_logprobs, advantages, mask):
        ratio = torch.exp((logprobs - old_logprobs) * mask)
        loss1 = -advantages * ratio
        loss2 = -advantages * torch.clamp(ratio, 1.0 - CLIPRANGE, 1.0 + CLIPRANGE)
        return torch.sum(torch.max(loss1, loss2) * mask) / mask.sum()

    @staticmethod
    def critic_loss_fn(values, old_values, returns, mask):
        clipped = torch.clamp(values, old_values - CLIPRANGE_VALUE, old_values + CLIPRANGE_VALUE)
        loss1 = (values - returns) ** 2
        loss2 = (clipped - returns) ** 2
        return 0.5 * torch.sum(torch.max(loss1, loss2) * mask) / mask.sum()

    def train(self, inputs):
        self.actor.train()
        self.critic.train()
        prompts, log_probs, ref_log_probs = inputs["prompts"], inputs["logprobs"], inputs["ref_logprobs"]
        reward_score, values = inputs["rewards"], inputs["value"]
        attention_mask, seq = inputs["attention_mask"], inputs["input_ids"]
        start = prompts.size()[-1] - 1
        action_mask = attention_mask[:, 1:]
        old_values = values
        with torch.no_grad():
            old_rewards = self.compute_rewards(prompts, log_probs, ref_log_probs, reward_score, action_mask)
            ends = start + action_mask[:, start:].sum(1) + 1
            for i in range(old_rewards.shape[0]):
                old_rewards[i, ends[i]:] = 0
                old_values[i, ends[i]:] = 0
            advantages, returns = self.advantages_and_returns(old_values, old_rewards, start)
        # actor
        logits = self.actor(input_ids=seq, attention_mask=attention_mask, use_cache=False).logits
        actor_log_prob = gather_log_probs(logits[:, :-1, :], seq[:, 1:])
        actor_loss = self.actor_loss_fn(actor_log_prob[:, start:], log_probs[:, start:], advantages,
                                        action_mask[:, start:])
        actor_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.actor.parameters(), MAX_GRAD_NORM)
        self.actor_opt.step()
        self.actor_sched.step()
        self.actor_opt.zero_grad(set_to_none=True)
        # critic
        value = self.critic.forward_value(seq, attention_mask, return_value_only=True, use_cache=False)[:, :-1]
        critic_loss = self.critic_loss_fn(value[:, start:], old_values[:, start:], returns, action_mask[:, start:])
        critic_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.critic.parameters(), MAX_GRAD_NORM)
        self.critic_opt.step()
        self.critic_sched.step()
        self.critic_opt.zero_grad(set_to_none=True)
        return actor_loss.item(), critic_loss.item()


def python_run(dirs, prompt_ids, args):
    ppo = PlainPPO(dirs, args.python_fused)
    times = []
    for it in range(args.iterations):
        prompts = prompt_ids[it * args.batch:(it + 1) * args.batch]
        mask = torch.ones_like(prompts)
        t0 = time.perf_counter()
        seq = ppo.generate(prompts, mask, args.new, seed=1234 + it)
        t1 = time.perf_counter()
        if seq.shape != (args.batch, args.prompt + args.new):
            sys.exit(f"python side generated {tuple(seq.shape)}, expected ({args.batch}, {args.prompt + args.new})")
        exp = ppo.experience(prompts, seq)
        t2 = time.perf_counter()
        ppo.train(exp)
        t3 = time.perf_counter()
        times.append({"generation": t1 - t0, "experience": t2 - t1, "training": t3 - t2})
    del ppo
    return times


# ---------------------------------------------------------------------------------------------------------------

def best(times):
    """Per phase, the fastest of the measured iterations; "iteration" is the fastest whole iteration."""
    out = {p: min(t[p] for t in times) for p in PHASES}
    out["iteration"] = min(sum(t[p] for p in PHASES) for t in times)
    return out


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=os.path.join(root, "build"))
    parser.add_argument("--shape", choices=sorted(SHAPES), default="125m")
    parser.add_argument("--batch", type=int, default=4, help="prompts per rollout = training micro-batch")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens (BOS included)")
    parser.add_argument("--new", type=int, default=32, help="answer tokens (min = max new tokens)")
    parser.add_argument("--iterations", type=int, default=3, help="PPO iterations per side; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--python-fused", action="store_true",
                        help="torch.optim.AdamW(fused=True) for the baseline (default: torch's CPU default, "
                             "fused=False / foreach=False)")
    parser.add_argument("--keep", help="write the models, prompts and pipeline here and keep them")
    args = parser.parse_args()
    if args.iterations < 2:
        sys.exit("--iterations must be >= 2 (the first is warm-up)")
    dschat = os.path.join(args.build, "bin", "dschat")
    plugins = os.path.join(args.build, "lib", "dschat", "plugins")
    for path in (dschat, *(os.path.join(plugins, f"libdschat-{p}.so") for p in ("opt", "ppo", "kv-cache"))):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run tools/build.sh first")

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer_dir = os.path.join(root, "configs", "quickstart", "model")
    tokenizer = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    texts, prompt_ids = make_prompts(tokenizer, args.iterations * args.batch, args.prompt)
    args.prompt_texts = texts
    shape = SHAPES[args.shape]
    print(f"PPO iteration, OPT {args.shape} shape (hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
          f"{shape['num_attention_heads']} heads, ffn {shape['ffn_dim']}, vocab {shape['vocab_size']}), random "
          f"weights, fp32; batch {args.batch} (generation = training micro-batch), prompt {args.prompt} + "
          f"{args.new} sampled tokens (top_k {TOP_K}); actor + critic trained, reference + reward frozen; "
          f"{args.threads} threads; python AdamW {'fused' if args.python_fused else 'default (fused=False)'}; "
          f"best of {args.rounds} round(s) x {args.iterations - 1} iterations after 1 warm-up; "
          f"torch {torch.__version__}", flush=True)

    tmp = args.keep or tempfile.mkdtemp(prefix="bench_ppo_")
    os.makedirs(tmp, exist_ok=True)
    try:
        _, dirs = write_models(tmp, args.shape, tokenizer_dir)
        toml = write_pipeline(tmp, dirs, args)
        ours, theirs, ours_warm, theirs_warm, ours_wall = [], [], None, None, float("inf")
        for _ in range(args.rounds):  # alternate: a busy machine slows both alike
            steps, wall = dschat_run(dschat, toml, tmp, args.threads)
            if len(steps) != args.iterations:
                sys.exit(f"dschat logged {len(steps)} iterations, expected {args.iterations}")
            ours += steps[1:]
            ours_warm = ours_warm or steps[0]
            ours_wall = min(ours_wall, wall)
            times = python_run(dirs, prompt_ids, args)
            theirs += times[1:]
            theirs_warm = theirs_warm or times[0]
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    o, t = best(ours), best(theirs)
    ow, tw = best([ours_warm]), best([theirs_warm])
    print(f"{'best s':12} {'dschat':>9} {'python':>9} {'python/dschat':>14}   {'warm-up: dschat':>15} {'python':>9}")
    for p in (*PHASES, "iteration"):
        print(f"{p:12} {o[p]:9.3f} {t[p]:9.3f} {t[p] / o[p]:13.2f}x   {ow[p]:15.3f} {tw[p]:9.3f}")
    print(f"per-iteration seconds, dschat: {[round(sum(x[p] for p in PHASES), 2) for x in ours]}, "
          f"python: {[round(sum(x[p] for p in PHASES), 2) for x in theirs]}")
    print(f"(dschat run wall time {ours_wall:.1f} s, including loading the four models and saving the actor)")


if __name__ == "__main__":
    main()
