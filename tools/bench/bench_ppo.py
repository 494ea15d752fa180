#!/usr/bin/env python3
"""One PPO iteration (DeepSpeed-Chat step 3) of `dschat run` vs a plain PyTorch + transformers PPO and vs TRL 1.12's
PPOTrainer, in the same run.

The "python" baseline is DeepSpeed-Chat's ppo_trainer.py written out as plain PyTorch on transformers models, one
process, no DeepSpeed:

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

--dtype bf16 loads all four models in bf16 on both sides ([models.*] dtype = "bf16" for dschat,
from_pretrained(dtype=torch.bfloat16) here); the trained ones step fp32 master weights on both sides (dschat's
engine; here gradients are copied to fp32 masters, AdamW steps them and the weights are copied back, as
DeepSpeed's bf16 optimizer does).

The dschat side is `build/bin/dschat run` of a generated pipeline: [models.sft] and [models.rm] (the folders
below), no SFT/RM stages, one `ppo` stage with actor = "sft", critic = "rm" (reference and reward default
to them), per_device_generation_batch_size = per_device_training_batch_size = --batch, ppo_epochs 1,
generation_batches 1, max_steps = --iterations (one rollout and one actor + critic step per iteration),
generation = kv-cache with the same sampling (top_k 50, min_new_tokens = max_new_tokens = --new), no held-out
prompts (no eval), no EMA hook, save_critic false. Its per-iteration phase times are the stage's metrics
time/generation_s, time/experience_s, time/training_s (stage_dir/metrics.jsonl), and "other": the rest of the
whole iteration (the wall time between two iterations' metrics records less the phases). That is mostly its
generation-vs-training log-probs consistency check (a training-path forward of consistency_sample_rows = 2 rows),
which DeepSpeed-Chat does not have and which RolloutCollector::collect runs after time/generation_s stops and
before time/experience_s starts, so neither phase counts it; it is left on, as dschat runs by default.

dschat rows (--rows; all by default), so that each gain is attributed:
  dschat            as `dschat run` runs by default: caching CPU allocator, reuse_experience_forwards = true (the
                    first training micro-batch trains through its experience forwards)
  dschat-system     DSCHAT_CPU_ALLOCATOR=system: LibTorch's own CPU allocator (what the cache gains)
  dschat-mkl        DSCHAT_CPU_GEMM=mkl: fp32 linears on MKL's sgemm, as PyTorch runs them (on AMD CPUs with
                    AVX-512 dschat's default is oneDNN's GEMM, see onednn_linear.h: what that gains)
  dschat-noreuse    the stage key reuse_experience_forwards = false: the actor and critic forwards run again in
                    training, as DeepSpeed-Chat does (what the reuse gains)
  python            the plain PyTorch PPO, glibc malloc
  python-jemalloc   the same with LD_PRELOAD=libjemalloc.so.2 (not in the default rows)
  trl               TRL 1.12.0's trl.experimental.ppo.PPOTrainer (the last TRL with PPO), run by
                    .venv-trl112/bin/python (tools/bench/setup_trl.sh makes it; in the default rows when it exists)
Every row runs as its own child process; os.wait4 on it gives that child's own peak RSS (ru_maxrss).

The trl row: PPOTrainer over the same folders: model = ref_model = the sft folder (AutoModelForCausalLM),
value_model = reward_model = the rm folder as OPTForSequenceClassification(num_labels=1) whose score.weight is
v_head.weight (written as rm-cls/), the same prompts (a Dataset of input_ids), per_device_train_batch_size =
--batch, gradient_accumulation_steps 1, num_mini_batches 1, num_ppo_epochs 1, total_episodes = iterations x
batch, response_length = --new, stop_token None (no eos: every answer is --new tokens), temperature 1, the actor's
lr / cosine schedule / 100 warm-up steps / betas 0.9, 0.95, kl_coef 0.1 (k1), cliprange 0.2, cliprange_value 0.2,
vf_coef 0.1 (TRL's default; one optimizer for policy + value), gamma 1, lam 0.95, whiten_rewards off,
missing_eos_penalty None, gradient_checkpointing off (TRL's default is on), bf16 = (--dtype bf16, autocast),
num_sample_generations 0, no eval / saving / logging, torch threads = --threads. TRL's pad id: a token id no prompt
uses (the tokenizer's pad is its BOS, which TRL's `ids != pad` masks would drop). Its phases are measured around
TRL's own code (trl_child); TRL_PPO_DIFFERENCES, printed with the table, lists the work TRL does differently.
TRL samples from the whole vocabulary (top_k 0 is hard-coded in its train()); --top-k 0 gives the other rows the
same sampling (default 50, DeepSpeed-Chat's).

Both sides load the same weights: two random OPT models (--shape; actor/reference = "sft", critic/reward = "rm")
written once with save_pretrained (fp32), the rm folder in dschat's reward-model layout (value_head.safetensors
with v_head.weight [1, hidden] + reward_model.json), both with the quickstart byte-level BPE tokenizer
(configs/quickstart/model; bos = eos = pad = id 0, as the quickstart's OPT). For the 50272-token shapes the
tokenizer only encodes the prompts (its ids are < 640); sampled ids cover the model's whole vocabulary. Prompts
are texts that this tokenizer encodes to exactly --prompt tokens (BOS included), so no row is padded on either
side, and both sides make exactly --new answer tokens per row (eos is suppressed until then): the same shapes,
the same work. Dropout is 0 (DeepSpeed-Chat's scripts disable it). Both sides run on --threads threads
(torch.set_num_threads in the Python child; OMP_NUM_THREADS / MKL_NUM_THREADS for dschat).

Each row runs --iterations iterations; the first is warm-up (allocator, Adam state creation) and is printed
separately. The table keeps, per phase, the fastest of the other iterations (over --rounds rounds, in which the
rows alternate: a busy machine slows all alike), and for "iteration" the fastest whole iteration; every
iteration's total is printed too. Ratios are python / dschat and trl / dschat (> 1: dschat is faster) and, for the attribution,
the variant without the feature / dschat (> 1: the feature helps).

--scaling: the iteration time of dschat (default row) and the Python baseline across batch 1/8/32 x prompt
64/256/1024 (--scaling-batches, --scaling-prompts), --new answer tokens (default 32), the 'small' shape unless
--shape says otherwise, --scaling-iterations iterations per cell (1 warm-up). Before each cell the FLOPs
(11 forward-equivalents of the base model, 6 of the LM head, attention in full) are set against the GEMM peak
measured at the top at --assumed-efficiency, and the memory the side needs (activations ~17 x batch x length x
hidden x layers elements; the Python side also ~4 [batch, length, vocab] logits-sized tensors, where dschat's
LM head runs on answer positions only) against MemAvailable; a side estimated over --max-cell-s seconds or over
85 % of the available memory is skipped with the estimate printed.

Shapes (--shape): 125m = OPT-125m (hidden 768, 12 layers, 12 heads, ffn 3072, vocab 50272); small = hidden 512,
6 layers, 8 heads, ffn 2048, vocab 50272; tiny = the quickstart model (hidden 128, 2 layers, 4 heads, ffn 512,
vocab 640).

Usage (from the repository root, after tools/build.sh, and tools/bench/setup_trl.sh for the trl row):
  .venv/bin/python tools/bench/bench_ppo.py [--build build] [--shape 125m|small|tiny] [--batch 4] [--prompt 32]
      [--new 32] [--iterations 3] [--rounds 1] [--threads N] [--dtype fp32|bf16] [--python-fused] [--top-k 50]
      [--rows dschat,dschat-system,dschat-noreuse,python,trl] [--keep DIR]
  .venv/bin/python tools/bench/bench_ppo.py --scaling [--shape small] [--new 32] [--scaling-iterations 2]
      [--scaling-batches 1,8,32] [--scaling-prompts 64,256,1024] [--max-cell-s 900] [--dtype fp32|bf16]
      [--estimate-only]
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
from safetensors.torch import save_file, load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import OPTConfig, OPTForCausalLM, OPTModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import machine  # noqa: E402

SHAPES = {
    "125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072, vocab_size=50272),
    "small": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, ffn_dim=2048, vocab_size=50272),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, ffn_dim=512, vocab_size=640),
}
PHASES = ("generation", "experience", "training")
PAD = 0  # the quickstart tokenizer's <|endoftext|>: bos = eos = pad, as DeepSpeed-Chat sets pad = eos
NO_DECAY = ["bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight"]
ROOT = os.path.dirname(os.path.dirname(HERE))
TRL_PPO_PYTHON = os.path.join(ROOT, ".venv-trl112", "bin", "python")  # tools/bench/setup_trl.sh makes it
ROWS = ("dschat", "dschat-system", "dschat-noreuse", "dschat-mkl", "python", "python-jemalloc", "trl")
DEFAULT_ROWS = "dschat,dschat-system,dschat-noreuse,dschat-mkl,python" + (",trl" if os.path.exists(TRL_PPO_PYTHON) else "")
LABELS = {"dschat": "dschat", "dschat-system": "system-alloc", "dschat-noreuse": "no-reuse", "dschat-mkl": "mkl-gemm",
          "python": "python",
          "python-jemalloc": "py-jemalloc", "trl": "trl-1.12"}

# DeepSpeed-Chat's PPO constants (dschat's defaults too).
KL_CTL, CLIP_REWARD, CLIPRANGE, CLIPRANGE_VALUE, GAMMA, LAM = 0.1, 5.0, 0.2, 0.2, 1.0, 0.95
ACTOR_LR, CRITIC_LR, WARMUP, MAX_GRAD_NORM = 9.65e-6, 5e-6, 100, 1.0
TOP_K = 50  # transformers' generate default, which DeepSpeed-Chat's sampling gets
TRL_VF_COEF = 0.1  # TRL's default: its one optimizer steps policy + value on pg_loss + vf_coef * vf_loss


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

    def encode(body):
        text = " Human: " + " ".join(body) + " Assistant:"
        return text, tokenizer.encode(text).ids

    while len(texts) < count:
        body = []
        text, encoded = encode(body)
        while len(encoded) < length:  # add words; many at a time while far from the length (a word is >= 1 token)
            body += [rng.choice(words) for _ in range(max(1, (length - len(encoded)) // 4))]
            text, encoded = encode(body)
        if len(encoded) == length and text not in texts:  # keep it only if it lands exactly on the length
            texts.append(text)
            ids.append(encoded)
    return texts, torch.tensor(ids, dtype=torch.long)


def write_pipeline(root, dirs, args, prompt_texts, name="bench.toml", reuse=True):
    with open(os.path.join(root, "prompts.jsonl"), "w") as out:
        for text in prompt_texts:
            out.write(json.dumps({"prompt": text, "response": " Fine.", "chosen": " Good.", "rejected": " Bad."}) + "\n")
    toml = f"""# Written by tools/bench/bench_ppo.py
[pipeline]
name = "bench-ppo"
output_dir = "run"
seed = 1234

[models.sft]
path = "{dirs['sft']}"
dtype = "{args.dtype}"

[models.rm]
path = "{dirs['rm']}"
dtype = "{args.dtype}"

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
reuse_experience_forwards = {"true" if reuse else "false"}
generation = {{ plugin = "kv-cache", max_new_tokens = {args.new}, min_new_tokens = {args.new}, do_sample = true, top_k = {args.top_k} }}
"""
    path = os.path.join(root, name)
    with open(path, "w") as out:
        out.write(toml)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Children

def run_child(cmd, env, cwd=None):
    """Runs cmd; (returncode, stdout, stderr, wall seconds, peak RSS of that child alone in MB)."""
    return machine.run_child(cmd, env, cwd)


def child_env(threads, allocator=None, preload=None, gemm=None):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("DSCHAT_CPU_ALLOCATOR", None)
    env.pop("DSCHAT_CPU_GEMM", None)
    env.pop("LD_PRELOAD", None)
    if allocator:
        env["DSCHAT_CPU_ALLOCATOR"] = allocator
    if gemm:
        env["DSCHAT_CPU_GEMM"] = gemm
    if preload:
        env["LD_PRELOAD"] = preload
    return env


def dschat_run(dschat, toml, root, threads, allocator=None, stage="ppo", gemm=None):
    """(per-iteration phase seconds, wall seconds, peak RSS MB) of one `dschat run`, or exits with its output.

    The phases are the stage's time/generation_s, time/experience_s, time/training_s. "other" is what they leave
    out of the whole iteration: the wall time between two consecutive iterations' log records (metrics.jsonl's
    "time") less the three phases, i.e. the rollout's log-probs consistency check (RolloutCollector::collect runs it
    after generation_s stops and before experience_s starts), the reward scoring where a trainer times it outside
    its phases, and the logging itself. The first iteration has no previous record: its "other" is 0."""
    run_dir = os.path.join(root, "run")
    shutil.rmtree(run_dir, ignore_errors=True)
    transient = ("error while loading shared libraries", "build fingerprint differs")
    for attempt in range(10):  # a concurrent build may be relinking the binary or its plugins: wait and retry
        rc, out, err, wall, rss = run_child([dschat, "run", toml], child_env(threads, allocator, gemm=gemm), cwd=root)
        if rc == 0 or not any(t in out + err for t in transient) or attempt == 9:
            break
        print(f"dschat run: the build looks mid-relink ({rc}); retrying in 30 s", file=sys.stderr, flush=True)
        time.sleep(30)
    if rc != 0:
        sys.exit(f"dschat run {os.path.basename(toml)} failed ({rc}):\n{out[-4000:]}\n{err[-4000:]}")
    per_step, stamp = {}, {}
    with open(os.path.join(run_dir, stage, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            tag = row["tag"]
            phase = tag[len("time/"):-len("_s")] if tag.startswith("time/") and tag.endswith("_s") else None
            if phase in PHASES:  # time/consistency_s (the check) stays in "other"
                per_step.setdefault(row["step"], {})[phase] = float(row["value"])
            if tag == "time/training_s":
                stamp[row["step"]] = float(row["time"])
    steps = sorted(per_step)
    times = []
    for i, s in enumerate(steps):
        t = dict(per_step[s])
        t["other"] = max(0.0, stamp[s] - stamp[steps[i - 1]] - sum(t[p] for p in PHASES)) if i > 0 else 0.0
        times.append(t)
    return times, wall, rss


def python_side(root, dirs, prompt_ids, args, preload=None):
    """(per-iteration phase seconds, wall seconds, peak RSS MB) of the plain PPO in a child process."""
    spec = os.path.join(root, "python_spec.json")
    with open(spec, "w") as out:
        json.dump({"dirs": dirs, "prompt_ids": prompt_ids.tolist(), "batch": args.batch, "prompt": args.prompt,
                   "new": args.new, "iterations": args.iterations, "fused": args.python_fused,
                   "dtype": args.dtype, "threads": args.threads, "top_k": args.top_k}, out)
    rc, out, err, wall, rss = run_child([sys.executable, os.path.abspath(__file__), "--child-python", spec],
                                        child_env(args.threads, preload=preload))
    if rc != 0:
        sys.exit(f"the python PPO failed ({rc}):\n{out[-4000:]}\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1]), wall, rss


# ---------------------------------------------------------------------------------------------------------------
# The plain PyTorch PPO: DeepSpeed-Chat's ppo_trainer.py (DeepSpeedPPOTrainer) without DeepSpeed.

def gather_log_probs(logits, labels):
    log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
    return log_probs.gather(dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)


class RewardModel(torch.nn.Module):
    """DeepSpeed-Chat's utils/model/reward_model.py: base transformer + v_head, scores at the answer's end."""

    def __init__(self, path, dtype):
        super().__init__()
        self.rwtransformer = OPTModel.from_pretrained(path, dtype=dtype)
        hidden = self.rwtransformer.config.word_embed_proj_dim
        self.v_head = torch.nn.Linear(hidden, 1, bias=False, dtype=dtype)
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


class MasterAdamW:
    """AdamW in DeepSpeed-Chat's decay / no-decay groups with its cosine schedule, clipping and zero grad.

    fp32 models step their parameters; bf16 ones step fp32 master copies (gradients copied up, weights copied
    back), as DeepSpeed's bf16 optimizer and dschat's engine do."""

    def __init__(self, model, lr, fused):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.mixed = any(p.dtype != torch.float32 for p in self.params)
        self.masters = [p.detach().float().clone() if self.mixed else p for p in self.params]
        decay = [m for (n, _), m in zip(named, self.masters) if not any(k in n.lower() for k in NO_DECAY)]
        no_decay = [m for (n, _), m in zip(named, self.masters) if any(k in n.lower() for k in NO_DECAY)]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=True if fused else None)
        total = 1000

        def cosine(step):
            if step < WARMUP:
                return step / max(1, WARMUP)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (step - WARMUP) / max(1, total - WARMUP))))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, cosine)

    def step(self):
        if self.mixed:
            for p, m in zip(self.params, self.masters):
                m.grad = p.grad.float()
        torch.nn.utils.clip_grad_norm_(self.masters, MAX_GRAD_NORM)
        self.opt.step()
        self.sched.step()
        if self.mixed:
            with torch.no_grad():
                for p, m in zip(self.params, self.masters):
                    p.copy_(m)
        for p, m in zip(self.params, self.masters):
            p.grad = None
            m.grad = None


class PlainPPO:
    def __init__(self, dirs, fused, dtype):
        self.actor = OPTForCausalLM.from_pretrained(dirs["sft"], dtype=dtype)
        self.actor.generation_config.eos_token_id = PAD
        self.ref = OPTForCausalLM.from_pretrained(dirs["sft"], dtype=dtype)
        self.critic = RewardModel(dirs["rm"], dtype)
        self.reward = RewardModel(dirs["rm"], dtype)
        for frozen in (self.ref, self.reward):
            frozen.eval()
            for p in frozen.parameters():
                p.requires_grad_(False)
        self.actor_opt = MasterAdamW(self.actor, ACTOR_LR, fused)
        self.critic_opt = MasterAdamW(self.critic, CRITIC_LR, fused)

    # ---- generate_experience ----
    def generate(self, prompts, mask, new, seed, top_k=TOP_K):
        self.actor.eval()
        torch.manual_seed(seed)
        with torch.no_grad():
            seq = self.actor.generate(input_ids=prompts, attention_mask=mask, do_sample=True, top_k=top_k, top_p=1.0,
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
        self.actor_opt.step()  # clip grad norm 1.0, AdamW, schedule, zero grad
        # critic
        value = self.critic.forward_value(seq, attention_mask, return_value_only=True, use_cache=False)[:, :-1]
        critic_loss = self.critic_loss_fn(value[:, start:], old_values[:, start:], returns, action_mask[:, start:])
        critic_loss.backward()
        self.critic_opt.step()
        return actor_loss.item(), critic_loss.item()


def python_child(spec_path):
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    dtype = torch.bfloat16 if spec["dtype"] == "bf16" else torch.float32
    prompt_ids = torch.tensor(spec["prompt_ids"], dtype=torch.long)
    batch, new, prompt = spec["batch"], spec["new"], spec["prompt"]
    ppo = PlainPPO(spec["dirs"], spec["fused"], dtype)
    times = []
    for it in range(spec["iterations"]):
        prompts = prompt_ids[it * batch:(it + 1) * batch]
        mask = torch.ones_like(prompts)
        t0 = time.perf_counter()
        seq = ppo.generate(prompts, mask, new, seed=1234 + it, top_k=spec.get("top_k", TOP_K))
        t1 = time.perf_counter()
        if seq.shape != (batch, prompt + new):
            sys.exit(f"python side generated {tuple(seq.shape)}, expected ({batch}, {prompt + new})")
        exp = ppo.experience(prompts, seq)
        t2 = time.perf_counter()
        ppo.train(exp)
        t3 = time.perf_counter()
        times.append({"generation": t1 - t0, "experience": t2 - t1, "training": t3 - t2, "other": 0.0})
    print(json.dumps(times), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# TRL 1.12's PPOTrainer (trl.experimental.ppo), in .venv-trl112, over the same weights and prompts.

TRL_PPO_DIFFERENCES = """Work differences, TRL 1.12 PPOTrainer vs dschat's ppo stage (from trl/experimental/ppo/ppo_trainer.py):
  - one model, one optimizer: PolicyAndValueWrapper runs the value backbone and the policy in one forward, one loss
    pg_loss + vf_coef (0.1) * vf_loss, one backward and one AdamW step over both (the actor's lr for both);
    dschat/DeepSpeed-Chat: two engines, two optimizers (critic lr 5e-6), two steps
  - no gradient clipping in TRL's PPO loop (optimizer.step() right after backward; max_grad_norm unused);
    dschat clips each model's gradients to norm 1.0
  - old log-probs from generate(output_scores=True): TRL keeps the [B, new, vocab] sampling logits and takes
    log_softmax of them, so its experience has no actor forward; dschat runs a training-path actor forward
    (reused as the first micro-batch's with reuse_experience_forwards) and a 2-row consistency check
  - experience: reference forward with the LM head over all B x L positions (then sliced to the answer and divided
    by temperature), value and reward forwards with output_hidden_states=True, in chunks of
    local_rollout_forward_batch_size (= --batch here); dschat's LM heads run on answer positions only
  - rewards: k1 KL per token (-kl_coef * (logp - ref_logp)) plus the score at the last token, no reward clipping
    (DeepSpeed-Chat/dschat clip to +-5); advantages always whitened (masked mean / var); whiten_rewards off
  - training forward: LM head over all B x L positions again, plus per micro-batch no-grad statistics: entropy of
    the [B, new, vocab] logits (softmax + logsumexp), approx KL, clip fractions
  - sampling: top_k 0 (the whole vocabulary) and temperature 1 + 1e-7 are hard-coded in train(); with
    stop_token None there is no eos, so every answer is exactly response_length tokens; dschat samples with
    --top-k and min_new_tokens = max_new_tokens (eos suppressed until then)
  - missing_eos_penalty None (off), truncate_response off (no stop token); TRL still checks each row for eos
  - per update: gc.collect() twice, empty_cache, metric gathers with .item() (the "other" and "training" rows)
  - --dtype bf16 is TRL's bf16=True: autocast over fp32 weights; dschat: bf16 weights with fp32 master copies"""

CHILD_NOTES = {}  # row -> lines a child reported about its own configuration


def write_value_model(root, dirs):
    """The rm folder as TRL's value / reward model: OPTForSequenceClassification(num_labels=1), whose bias-free
    `score` Linear(hidden, 1) gets dschat's v_head.weight; the same OPT base weights."""
    from transformers import OPTForSequenceClassification
    path = os.path.join(root, "rm-cls")
    model = OPTForSequenceClassification.from_pretrained(dirs["rm"], num_labels=1)
    head = load_file(os.path.join(dirs["rm"], "value_head.safetensors"))["v_head.weight"]
    with torch.no_grad():
        model.score.weight.copy_(head.to(model.score.weight.dtype))
    model.config.pad_token_id = PAD
    model.save_pretrained(path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(dirs["rm"], f), path)
    return path


def trl_side(root, dirs, prompt_ids, args):
    """(per-iteration phase seconds, wall seconds, peak RSS MB) of TRL's PPOTrainer in a child process."""
    if not os.path.exists(args.trl_python):
        sys.exit(f"the trl row needs {args.trl_python}: run tools/bench/setup_trl.sh")
    spec = os.path.join(root, "trl_spec.json")
    with open(spec, "w") as out:
        json.dump({"dirs": dict(dirs, value=write_value_model(root, dirs)), "prompt_ids": prompt_ids.tolist(),
                   "batch": args.batch, "prompt": args.prompt, "new": args.new, "iterations": args.iterations,
                   "dtype": args.dtype, "threads": args.threads, "out": os.path.join(root, "trl_out")}, out)
    rc, out, err, wall, rss = run_child([args.trl_python, os.path.abspath(__file__), "--child-trl", spec],
                                        child_env(args.threads))
    if rc != 0:
        sys.exit(f"the TRL PPO failed ({rc}):\n{out[-4000:]}\n{err[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    CHILD_NOTES["trl"] = result["notes"]
    return result["times"], wall, rss


def trl_child(spec_path):
    """Runs trl.experimental.ppo.PPOTrainer.train() for `iterations` updates and prints each update's phases.

    Phases, measured around TRL's own code without changing it: generation = its batch_generation() call;
    experience = from there to the first training forward (ref / value / reward forwards, rewards, GAE,
    whitening); training = from there to on_step_end (the combined policy + value forward, backward, AdamW,
    the no-grad statistics and self.log); other = the rest of the update (gc.collect, empty_cache, dels and
    the dataloader's next batch at the top of the loop)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import warnings
    warnings.filterwarnings("ignore")
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from transformers import AutoModelForCausalLM, AutoTokenizer, OPTForSequenceClassification, TrainerCallback
    import trl
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_mod
    disable_progress_bar()

    dirs, batch, new, prompt, iters = spec["dirs"], spec["batch"], spec["new"], spec["prompt"], spec["iterations"]
    prompt_ids = spec["prompt_ids"]
    tokenizer = AutoTokenizer.from_pretrained(dirs["sft"])
    # TRL derives every mask from `ids != pad_token_id`; the quickstart tokenizer's pad is its BOS (id 0), which
    # every prompt starts with. A pad id no prompt uses keeps the prompts whole (a sampled answer token equal to
    # it is read as padding by TRL: same shapes, only masks differ).
    used = {t for row in prompt_ids for t in row}
    pad = max(i for i in range(len(tokenizer)) if i not in used)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    assert tokenizer.pad_token_id == pad, (tokenizer.pad_token_id, pad)

    policy = AutoModelForCausalLM.from_pretrained(dirs["sft"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(dirs["sft"], dtype=torch.float32)
    value = OPTForSequenceClassification.from_pretrained(dirs["value"], dtype=torch.float32)
    reward = OPTForSequenceClassification.from_pretrained(dirs["value"], dtype=torch.float32)
    dataset = Dataset.from_dict({"input_ids": prompt_ids})
    config = PPOConfig(
        output_dir=spec["out"], report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no",
        disable_tqdm=True, seed=1234, use_cpu=True, dataloader_num_workers=0,
        bf16=spec["dtype"] == "bf16", fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=batch, gradient_accumulation_steps=1, num_mini_batches=1, num_ppo_epochs=1,
        total_episodes=iters * batch, local_rollout_forward_batch_size=batch, num_sample_generations=0,
        response_length=new, stop_token=None, stop_token_id=None, temperature=1.0, missing_eos_penalty=None,
        learning_rate=ACTOR_LR, lr_scheduler_type="cosine", warmup_steps=WARMUP, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=MAX_GRAD_NORM,
        kl_coef=KL_CTL, kl_estimator="k1", cliprange=CLIPRANGE, cliprange_value=CLIPRANGE_VALUE,
        vf_coef=TRL_VF_COEF, gamma=GAMMA, lam=LAM, whiten_rewards=False)

    class PhaseTimer(TrainerCallback):
        def __init__(self):
            self.times, self.mark, self.last = [], {}, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now, m = time.perf_counter(), self.mark
            t = {"generation": m["gen_end"] - m["gen_start"], "experience": m["train_start"] - m["gen_end"],
                 "training": now - m["train_start"]}
            t["other"] = max(0.0, now - self.last - sum(t.values()))
            self.times.append(t)
            self.last, self.mark = now, {}

    timer = PhaseTimer()
    generated = []
    original_generation, original_forward = ppo_mod.batch_generation, ppo_mod.forward

    def timed_generation(*a, **k):
        timer.mark["gen_start"] = time.perf_counter()
        out = original_generation(*a, **k)
        timer.mark["gen_end"] = time.perf_counter()
        generated.append((tuple(out[0].shape), int((out[0][:, prompt:] == pad).sum())))
        return out

    def timed_forward(model, *a, **k):
        if "train_start" not in timer.mark and isinstance(model, ppo_mod.PolicyAndValueWrapper):
            timer.mark["train_start"] = time.perf_counter()
        return original_forward(model, *a, **k)

    ppo_mod.batch_generation, ppo_mod.forward = timed_generation, timed_forward
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=dataset, eval_dataset=dataset, callbacks=[timer])
    trainer.train()
    for shape, pads in generated:
        if shape != (batch, prompt + new):
            sys.exit(f"TRL generated {shape}, expected ({batch}, {prompt + new})")
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    defaults = opt.defaults
    notes = [f"trl {trl.__version__}: optimizer {type(opt).__name__}(fused={defaults.get('fused')}, "
             f"foreach={defaults.get('foreach')}) over policy + value ({config.optim}), mixed precision "
             f"{trainer.accelerator.mixed_precision}, weights {next(policy.parameters()).dtype}; "
             f"generation {iters} x {generated[0][0] if generated else '?'} (prompt + answer), "
             f"{sum(p for _, p in generated)} sampled tokens equal to TRL's pad id {pad}"]
    print(json.dumps({"times": timer.times, "notes": notes}), flush=True)


# ---------------------------------------------------------------------------------------------------------------

def best(times):
    """Per phase, the fastest of the measured iterations; "iteration" is the fastest whole iteration (the phases
    plus "other", what the phases leave out)."""
    out = {p: min(t.get(p, 0.0) for t in times) for p in (*PHASES, "other")}
    out["iteration"] = min(sum(t.get(p, 0.0) for p in (*PHASES, "other")) for t in times)
    return out


def print_table(rows, b, w, rss, wall, labels, ref="dschat", ratio_rows=("python", "trl"), wall_note=""):
    """The table every bench prints: best seconds a phase per row, ratios row / ref, the warm-up iteration."""
    ratios = [r for r in ratio_rows if r in rows and ref in rows]
    head = f"{'best s':12} " + " ".join(f"{labels[r]:>12}" for r in rows)
    head += "".join(f" {labels[r] + '/' + labels[ref]:>16}" for r in ratios)
    head += "   warm-up: " + " ".join(f"{labels[r]:>12}" for r in rows)
    print(head)
    for p in (*PHASES, "other", "iteration"):
        line = f"{p:12} " + " ".join(f"{b[r][p]:12.3f}" for r in rows)
        line += "".join(f" {b[r][p] / b[ref][p]:15.2f}x" if b[ref][p] > 0 else f" {'-':>16}" for r in ratios)
        line += "            " + " ".join(f"{w[r][p]:12.3f}" for r in rows)
        print(line)
    print(f"{'peak RSS MB':12} " + " ".join(f"{rss[r]:12.0f}" for r in rows)
          + "".join(f" {rss[r] / rss[ref]:15.2f}x" for r in ratios))
    print(f"{'wall s':12} " + " ".join(f"{wall[r]:12.1f}" for r in rows) + wall_note)


def run_row(row, tmp, dirs, prompt_ids, args, dschat, tomls):
    if row == "trl":
        return trl_side(tmp, dirs, prompt_ids, args)
    if row == "python":
        return python_side(tmp, dirs, prompt_ids, args)
    if row == "python-jemalloc":
        return python_side(tmp, dirs, prompt_ids, args, preload=machine.jemalloc_path())
    toml = tomls["noreuse" if row == "dschat-noreuse" else "default"]
    return dschat_run(dschat, toml, tmp, args.threads, allocator="system" if row == "dschat-system" else None,
                      gemm="mkl" if row == "dschat-mkl" else None)


def compare(args, tmp, dirs, tokenizer, dschat, rows):
    texts, prompt_ids = make_prompts(tokenizer, args.iterations * args.batch, args.prompt)
    tomls = {"default": write_pipeline(tmp, dirs, args, texts),
             "noreuse": write_pipeline(tmp, dirs, args, texts, name="bench-noreuse.toml", reuse=False)}
    times = {r: [] for r in rows}
    warm, wall, rss = {}, {r: float("inf") for r in rows}, {r: 0.0 for r in rows}
    for _ in range(args.rounds):  # alternate: a busy machine slows all alike
        for row in rows:
            steps, w, m = run_row(row, tmp, dirs, prompt_ids, args, dschat, tomls)
            if len(steps) != args.iterations:
                sys.exit(f"{row} logged {len(steps)} iterations, expected {args.iterations}")
            times[row] += steps[1:]
            warm.setdefault(row, steps[0])
            wall[row] = min(wall[row], w)
            rss[row] = max(rss[row], m)

    b = {r: best(times[r]) for r in rows}
    w = {r: best([warm[r]]) for r in rows}
    ref = "dschat" if "dschat" in rows else None
    print_table(rows, b, w, rss, wall, LABELS, ref=ref or rows[0],
                wall_note="   (whole child: loading four models, every iteration, saving the actor)")
    print("other: what the phases leave out of the whole iteration. dschat: its consistency check and logging "
          "(metrics.jsonl times); trl: gc.collect, dels and the dataloader at the top of each update")
    if ref:
        for row, what in (("dschat-system", "the caching CPU allocator (vs DSCHAT_CPU_ALLOCATOR=system)"),
                          ("dschat-noreuse", "reuse_experience_forwards (vs = false)"),
                          ("dschat-mkl", "oneDNN's fp32 GEMM (vs DSCHAT_CPU_GEMM=mkl, the GEMM the Python sides run)"),
                          ("python-jemalloc", "dschat vs python with jemalloc")):
            if row in rows:
                print(f"{what}: " + ", ".join(f"{p} {b[row][p] / b[ref][p]:.2f}x" for p in (*PHASES, "iteration"))
                      + f"; peak RSS {rss[row]:.0f} -> {rss[ref]:.0f} MB")
    for row in rows:
        print(f"per-iteration seconds, {LABELS[row]}: "
              f"{[round(sum(x.get(p, 0.0) for p in (*PHASES, 'other')), 2) for x in times[row]]}")
    for row in rows:
        for note in CHILD_NOTES.get(row, []):
            print(f"{LABELS[row]}: {note}")
    if "trl" in rows:
        print(TRL_PPO_DIFFERENCES)


def estimate(args, config, batch, prompt, peak_gflops, avail_bytes):
    """(dschat, python) lists of reasons not to run this cell (empty: run it), with the estimates in them."""
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    tokens = batch * (prompt + args.new)
    layer_params = layers * (4 * d * d + 2 * d * config.ffn_dim)
    flops = cell_flops(args, config, batch, prompt)
    seconds = args.scaling_iterations * flops / (peak_gflops * 1e9 * args.assumed_efficiency)
    elt = 2 if args.dtype == "bf16" else 4
    activations = 17 * tokens * d * layers * elt * 2  # actor + critic in training
    weights = 4 * (layer_params + vocab * d) * elt + 2 * 3 * (layer_params + vocab * d) * 4  # + grads, Adam
    need = {"dschat": activations + weights + 4 * batch * args.new * vocab * 4,
            "python": activations + weights + 4 * tokens * vocab * elt}
    reasons = {}
    for side in ("dschat", "python"):
        r = []
        if args.max_cell_s and seconds > args.max_cell_s:
            r.append(f"~{seconds:.0f} s > --max-cell-s {args.max_cell_s:g}")
        if need[side] > 0.85 * avail_bytes:
            r.append(f"needs ~{need[side] / 2**30:.1f} GiB > 85% of MemAvailable {avail_bytes / 2**30:.1f} GiB")
        reasons[side] = r
    return reasons["dschat"], reasons["python"]


def cell_flops(args, config, batch, prompt):
    """FLOPs of one PPO iteration: 11 forward-equivalents of the base model (generation 1, experience 4,
    training 2 x 3), 6 of the LM head (generation, actor and reference, actor training 3), attention in full."""
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    length = prompt + args.new
    layer_params = layers * (4 * d * d + 2 * d * config.ffn_dim)
    f_base, f_head = 2 * layer_params, 2 * vocab * d  # forward FLOPs a token
    return batch * length * (11 * f_base + 6 * f_head) + 11 * 4 * batch * length * length * d * layers


def estimate_text(args, config, batch, prompt, peak_gflops):
    flops = cell_flops(args, config, batch, prompt)
    seconds = args.scaling_iterations * flops / (peak_gflops * 1e9 * args.assumed_efficiency)
    return (f"~{flops / 1e12:.1f} TFLOP an iteration, ~{seconds:.0f} s a side for {args.scaling_iterations} "
            f"iterations at {100 * args.assumed_efficiency:g}% of {peak_gflops:.0f} GFLOP/s")


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 40


def scaling(args, tmp, dirs, config, tokenizer, dschat):
    peak = machine.gemm_peak_gflops(torch.bfloat16 if args.dtype == "bf16" else torch.float32, args.threads)
    avail = mem_available()
    print(f"GEMM peak ({args.dtype}, at::mm 2048^3): {peak:.1f} GFLOP/s; MemAvailable {avail / 2**30:.1f} GiB; "
          f"{args.scaling_iterations} iterations a cell (1 warm-up), best of the rest", flush=True)
    args.iterations = args.scaling_iterations
    rows = []
    for batch in [int(x) for x in args.scaling_batches.split(",")]:
        for prompt in [int(x) for x in args.scaling_prompts.split(",")]:
            args.batch, args.prompt = batch, prompt
            skip_d, skip_p = estimate(args, config, batch, prompt, peak, avail)
            result = {"batch": batch, "prompt": prompt}
            cell = f"batch {batch} prompt {prompt}"
            if args.estimate_only or (skip_d and skip_p):
                print(f"{cell}: {estimate_text(args, config, batch, prompt, peak)}; "
                      f"dschat {'skipped: ' + '; '.join(skip_d) if skip_d else 'runs'}; "
                      f"python {'skipped: ' + '; '.join(skip_p) if skip_p else 'runs'}", flush=True)
                rows.append(result)
                continue
            texts, prompt_ids = make_prompts(tokenizer, args.iterations * batch, prompt)
            toml = write_pipeline(tmp, dirs, args, texts)
            if skip_d:
                print(f"{cell}: dschat skipped: {'; '.join(skip_d)}", flush=True)
            else:
                steps, _, rss = dschat_run(dschat, toml, tmp, args.threads)
                result["dschat"], result["dschat_rss"] = best(steps[1:]), rss
            if skip_p:
                print(f"{cell}: python skipped: {'; '.join(skip_p)}", flush=True)
            else:
                steps, _, rss = python_side(tmp, dirs, prompt_ids, args)
                result["python"], result["python_rss"] = best(steps[1:]), rss
            d, p = result.get("dschat"), result.get("python")
            print(f"{cell}: dschat {d['iteration'] if d else float('nan'):.2f} s, "
                  f"python {p['iteration'] if p else float('nan'):.2f} s", flush=True)
            rows.append(result)

    def phases(r):
        return "/".join(f"{r[p]:.3g}" for p in PHASES) if r else "skipped"

    if args.estimate_only:
        return
    print()
    print(f"PPO iteration seconds, {args.shape} shape, {args.dtype}, new {args.new}, {args.threads} threads")
    print(f"{'batch':>5} {'prompt':>6} {'dschat s':>9} {'python s':>9} {'py/dschat':>9} {'dschat RSS':>10} "
          f"{'py RSS':>7}   {'dschat gen/exp/train':>22} {'python gen/exp/train':>22}")
    for r in rows:
        d, p = r.get("dschat"), r.get("python")
        ds = f"{d['iteration']:9.3f}" if d else f"{'skipped':>9}"
        ps = f"{p['iteration']:9.3f}" if p else f"{'skipped':>9}"
        ratio = f"{p['iteration'] / d['iteration']:8.2f}x" if d and p else f"{'':9}"
        drss = f"{r['dschat_rss']:10.0f}" if d else f"{'':10}"
        prss = f"{r['python_rss']:7.0f}" if p else f"{'':7}"
        print(f"{r['batch']:5} {r['prompt']:6} {ds} {ps} {ratio} {drss} {prss}   {phases(d):>22} {phases(p):>22}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--child-python":
        return python_child(sys.argv[2])
    if len(sys.argv) == 3 and sys.argv[1] == "--child-trl":
        return trl_child(sys.argv[2])
    root = os.path.dirname(os.path.dirname(HERE))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=os.path.join(root, "build"))
    parser.add_argument("--shape", choices=sorted(SHAPES), help="default: 125m; small with --scaling")
    parser.add_argument("--batch", type=int, default=4, help="prompts per rollout = training micro-batch")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens (BOS included)")
    parser.add_argument("--new", type=int, default=32, help="answer tokens (min = max new tokens)")
    parser.add_argument("--iterations", type=int, default=3, help="PPO iterations per side; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="all four models, both sides")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="a subset of " + ",".join(ROWS))
    parser.add_argument("--python-fused", action="store_true",
                        help="torch.optim.AdamW(fused=True) for the baseline (default: torch's CPU default, "
                             "fused=False / foreach=False)")
    parser.add_argument("--top-k", type=int, default=TOP_K,
                        help="top-k sampling of the dschat and python rows (0: off; TRL's PPO always samples the "
                             "whole vocabulary, top_k 0)")
    parser.add_argument("--trl-python", default=TRL_PPO_PYTHON, help="the trl row's interpreter (trl 1.12.0)")
    parser.add_argument("--keep", help="write the models, prompts and pipeline here and keep them")
    parser.add_argument("--scaling", action="store_true", help="iteration time across batch x prompt length")
    parser.add_argument("--scaling-batches", default="1,8,32")
    parser.add_argument("--scaling-prompts", default="64,256,1024")
    parser.add_argument("--scaling-iterations", type=int, default=2)
    parser.add_argument("--max-cell-s", type=float, default=900,
                        help="skip a scaling side estimated to take longer (0: never skip for time)")
    parser.add_argument("--estimate-only", action="store_true",
                        help="with --scaling: print each cell's estimates and whether it would run, run nothing")
    parser.add_argument("--assumed-efficiency", type=float, default=0.5,
                        help="share of the GEMM peak the time estimate assumes")
    args = parser.parse_args()
    args.shape = args.shape or ("small" if args.scaling else "125m")
    if args.iterations < 2 or args.scaling_iterations < 2:
        sys.exit("--iterations and --scaling-iterations must be >= 2 (the first is warm-up)")
    rows = [r for r in args.rows.split(",") if r]
    for r in rows:
        if r not in ROWS:
            sys.exit(f"--rows: unknown row {r!r} (known: {', '.join(ROWS)})")
    if "python-jemalloc" in rows and not machine.jemalloc_path():
        sys.exit("--rows python-jemalloc: libjemalloc.so.2 is not installed (apt-get install libjemalloc2)")
    dschat = os.path.join(args.build, "bin", "dschat")
    plugins = os.path.join(args.build, "lib", "dschat", "plugins")
    for path in (dschat, *(os.path.join(plugins, f"libdschat-{p}.so") for p in ("opt", "ppo", "kv-cache"))):
        if not os.path.exists(path) and (args.scaling or any(r.startswith("dschat") for r in rows)):
            sys.exit(f"{path} is missing: run tools/build.sh first")

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for line in machine.describe(args.threads):
        print(line)
    print(machine.gemm_line(args.threads), flush=True)
    tokenizer_dir = os.path.join(root, "configs", "quickstart", "model")
    tokenizer = Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    shape = SHAPES[args.shape]
    what = (f"PPO iteration, OPT {args.shape} shape (hidden {shape['hidden_size']}, {shape['num_hidden_layers']} "
            f"layers, {shape['num_attention_heads']} heads, ffn {shape['ffn_dim']}, vocab {shape['vocab_size']}), "
            f"random weights, {args.dtype}; ")
    if args.scaling:
        what += f"batch x prompt grid, {args.new} sampled tokens (top_k {args.top_k}); "
    else:
        what += (f"batch {args.batch} (generation = training micro-batch), prompt {args.prompt} + {args.new} sampled "
                 f"tokens (top_k {args.top_k}; trl: 0, TRL's PPO fixes it); best of {args.rounds} round(s) x {args.iterations - 1} iterations after "
                 f"1 warm-up; ")
    print(what + f"actor + critic trained, reference + reward frozen; {args.threads} threads; python AdamW "
          f"{'fused' if args.python_fused else 'default (fused=False)'}", flush=True)

    tmp = args.keep or tempfile.mkdtemp(prefix="bench_ppo_")
    os.makedirs(tmp, exist_ok=True)
    try:
        config, dirs = write_models(tmp, args.shape, tokenizer_dir)
        if args.scaling:
            scaling(args, tmp, dirs, config, tokenizer, dschat)
        else:
            compare(args, tmp, dirs, tokenizer, dschat, rows)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
