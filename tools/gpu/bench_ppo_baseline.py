#!/usr/bin/env python3
"""One DeepSpeed-Chat step-3 PPO iteration in plain PyTorch + HF transformers: the GPU baseline for dschat.

This is DeepSpeed-Chat's dschat/rlhf/ppo_trainer.py (DeepSpeedPPOTrainer) without DeepSpeed, one process, one
device, with the fast options a careful PyTorch user would turn on: bf16 weights, attn_implementation="sdpa",
KV-cache generation (use_cache=True), torch.no_grad where DS-Chat has it, fused AdamW on CUDA.

Models (random weights from configs, nothing downloaded; dropout 0 as DS-Chat's OPT scripts run):
  actor     OPTForCausalLM, OPT-1.3B shape            reference  a frozen copy of the actor
  critic    OPTModel, OPT-350M shape + v_head          reward     a frozen copy of the critic
  v_head is DS-Chat's RewardModel head: Linear(word_embed_proj_dim, 1, bias=False) on the last hidden state
  (OPTModel's output is projected to word_embed_proj_dim = 512 for the 350M shape).

One iteration:
  generate    actor.generate(do_sample=True, top_k 50, min_new_tokens = max_new_tokens = --answer-len), eval
              mode, no_grad: every row gets exactly --answer-len tokens (the fixed length of the DS-Chat benchmark)
  experience  no_grad, train mode (DS-Chat's order): actor and reference log-probs of the full sequence, critic
              values, reward score at the answer's last token (DS-Chat's forward_value)
  train       compute_rewards (kl_ctl 0.1, clip_reward_value 5), GAE (gamma 1, lambda 0.95); actor forward,
              clipped policy loss (0.2), backward, clip grad norm 1.0, AdamW; then the same for the critic with the
              clipped value loss (0.2). bf16 models step fp32 master weights (DeepSpeed's bf16 optimizer does).

TFLOPs follow DS-Chat's utils/perf.py (print_throughput_step3): F(k, B, s, L, h, V) = 24 k B s L h^2 (1 + s/(6h)
+ V/(16 L h)), s = prompt + answer. Generation counts k = 1 for the actor over the full s; training counts k = 3
for the actor plus k = 3 for the critic (each with its own L, h, V). perf.py divides generation FLOPs by the
generate() time and leaves the experience forwards uncounted; here the total time includes them, so the
effective TFLOPs (gen + train FLOPs over the whole iteration) is a slightly harder figure than DS-Chat's e2e one
(which it also prints, as ds_chat_e2e_*).

Usage:
  python tools/gpu/bench_ppo_baseline.py --batch auto --json out.json           # on the GPU machine
  python tools/gpu/bench_ppo_baseline.py --tiny --device cpu --dtype fp32 --batch 2 --prompt-len 8 \\
      --answer-len 8 --iterations 2                                              # CPU smoke test
"""
import argparse
import copy
import gc
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import OPTConfig, OPTForCausalLM, OPTModel
from transformers.utils import logging as hf_logging

# DeepSpeed-Chat's PPO constants (ppo_trainer.py) and its step-3 script defaults for OPT-1.3B/350M.
KL_CTL, CLIP_REWARD, CLIPRANGE, CLIPRANGE_VALUE, GAMMA, LAM = 0.1, 5.0, 0.2, 0.2, 1.0, 0.95
ACTOR_LR, CRITIC_LR, BETAS, EPS, MAX_GRAD_NORM = 9.65e-6, 5e-6, (0.9, 0.95), 1e-8, 1.0
TOP_K = 50  # the transformers default DS-Chat's sampling got (transformers 5 no longer defaults it)
AUTO_BATCHES = (64, 32, 16, 8, 4, 2, 1)

COMMON = dict(vocab_size=50272, max_position_embeddings=2048, dropout=0.0, attention_dropout=0.0, layerdrop=0.0,
              pad_token_id=1, bos_token_id=2, eos_token_id=2)
SHAPES = {
    "actor": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192,
                  word_embed_proj_dim=2048, do_layer_norm_before=True),
    "critic": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096,
                   word_embed_proj_dim=512, do_layer_norm_before=False),
}
TINY = {  # same structure (incl. the critic's projection and post-LN), tiny sizes, for CPU smoke tests
    "actor": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256,
                  word_embed_proj_dim=64, do_layer_norm_before=True, vocab_size=512, max_position_embeddings=512),
    "critic": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256,
                   word_embed_proj_dim=32, do_layer_norm_before=False, vocab_size=512, max_position_embeddings=512),
}


def opt_config(shape):
    return OPTConfig(**{**COMMON, **shape}, attn_implementation="sdpa")


# ---------------------------------------------------------------------------------------------------------------
# Models

class RewardModel(torch.nn.Module):
    """DS-Chat's utils/model/reward_model.py (the forward_value path): OPTModel + v_head."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.rwtransformer = OPTModel(config)
        self.v_head = torch.nn.Linear(config.word_embed_proj_dim, 1, bias=False)

    def forward_value(self, input_ids, attention_mask, return_value_only=False, prompt_length=0, use_cache=False):
        hidden = self.rwtransformer(input_ids, attention_mask=attention_mask, use_cache=use_cache)[0]
        values = self.v_head(hidden).squeeze(-1)
        if return_value_only:
            return values
        # score at the last answer token: the one before the first pad after the prompt (or the last one)
        pad, seq_len = self.config.pad_token_id, input_ids.shape[1]
        scores = []
        for i in range(values.size(0)):
            c_inds = (input_ids[i, prompt_length:] == pad).nonzero()
            c_ind = c_inds[0].item() + prompt_length if len(c_inds) > 0 else seq_len
            scores.append(values[i, c_ind - 1])
        return {"values": values, "chosen_end_scores": torch.stack(scores)}


def frozen_copy(model):
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class MasterAdamW:
    """AdamW (weight decay 0, DS-Chat's default) with grad-norm clipping. Low-precision models step fp32 master
    copies (grads copied up, weights copied back), as DeepSpeed's bf16 optimizer does; fp32 models step in place."""

    def __init__(self, model, lr, device):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.mixed = any(p.dtype != torch.float32 for p in self.params)
        if self.mixed:
            self.masters = [p.detach().float().clone() for p in self.params]
            for m in self.masters:
                m.grad = torch.zeros_like(m)  # persistent fp32 grad buffers, filled by one foreach copy per step
        else:
            self.masters = self.params
        fused = device.type == "cuda"
        self.opt = torch.optim.AdamW(self.masters, lr=lr, betas=BETAS, eps=EPS, weight_decay=0.0,
                                     fused=fused or None)

    def step(self):
        if self.mixed:
            torch._foreach_copy_([m.grad for m in self.masters], [p.grad for p in self.params])
        torch.nn.utils.clip_grad_norm_(self.masters, MAX_GRAD_NORM)
        self.opt.step()
        if self.mixed:
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.masters)
        for p in self.params:
            p.grad = None


# ---------------------------------------------------------------------------------------------------------------
# PPO, as DeepSpeedPPOTrainer

def gather_log_probs(logits, labels):
    log_probs = F.log_softmax(logits, dim=-1)
    return log_probs.gather(dim=-1, index=labels.unsqueeze(-1)).squeeze(-1)


class PlainPPO:
    def __init__(self, shapes, dtype, device):
        self.device = device
        with torch.device(device):  # initialise on the device: random init of 1.3B params on CPU takes minutes
            self.actor = OPTForCausalLM(opt_config(shapes["actor"])).to(dtype)
            self.critic = RewardModel(opt_config(shapes["critic"])).to(dtype)
        self.ref = frozen_copy(self.actor)
        self.reward = frozen_copy(self.critic)
        self.pad = self.actor.config.pad_token_id
        self.actor_opt = MasterAdamW(self.actor, ACTOR_LR, device)
        self.critic_opt = MasterAdamW(self.critic, CRITIC_LR, device)

    def generate(self, prompts, mask, answer_len):
        self.actor.eval()
        self.critic.eval()
        with torch.no_grad():
            # suppress_tokens=[pad]: a sampled pad would shorten that row's action mask; the work stays fixed
            seq = self.actor.generate(input_ids=prompts, attention_mask=mask, do_sample=True, top_k=TOP_K,
                                      top_p=1.0, temperature=1.0, max_new_tokens=answer_len,
                                      min_new_tokens=answer_len, pad_token_id=self.pad, suppress_tokens=[self.pad],
                                      use_cache=True)
        # DS-Chat drops rows whose answer has <= 1 non-pad token (none here: the answer length is forced)
        valid = (seq[:, prompts.shape[1]:] != self.pad).sum(-1) > 1
        return seq[valid]

    def experience(self, prompts, seq):
        self.actor.train()  # DS-Chat runs the experience forwards in train mode (dropout is 0 here)
        self.critic.train()
        attention_mask = seq.not_equal(self.pad).long()
        with torch.no_grad():
            logits = self.actor(seq, attention_mask=attention_mask).logits
            logits_ref = self.ref(seq, attention_mask=attention_mask).logits
            reward_score = self.reward.forward_value(seq, attention_mask,
                                                     prompt_length=prompts.shape[1])["chosen_end_scores"]
            values = self.critic.forward_value(seq, attention_mask, return_value_only=True)[:, :-1]
            logprobs = gather_log_probs(logits[:, :-1, :], seq[:, 1:])
            del logits  # [B, s, V] is the largest activation of the phase; free it before the next one
            ref_logprobs = gather_log_probs(logits_ref[:, :-1, :], seq[:, 1:])
        return {"prompts": prompts, "logprobs": logprobs, "ref_logprobs": ref_logprobs, "value": values,
                "rewards": reward_score, "input_ids": seq, "attention_mask": attention_mask}

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
    def get_advantages_and_returns(values, rewards, start):
        lastgaelam = 0
        advantages_reversed = []
        length = rewards.size()[-1]
        for t in reversed(range(start, length)):
            nextvalues = values[:, t + 1] if t < length - 1 else 0.0
            delta = rewards[:, t] + GAMMA * nextvalues - values[:, t]
            lastgaelam = delta + GAMMA * LAM * lastgaelam
            advantages_reversed.append(lastgaelam)
        advantages = torch.stack(advantages_reversed[::-1], dim=1)
        returns = advantages + values[:, start:]
        return advantages.detach(), returns

    @staticmethod
    def actor_loss_fn(logprobs, old_logprobs, advantages, mask):
        ratio = torch.exp((logprobs - old_logprobs) * mask)
        pg_loss1 = -advantages * ratio
        pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - CLIPRANGE, 1.0 + CLIPRANGE)
        return torch.sum(torch.max(pg_loss1, pg_loss2) * mask) / mask.sum()

    @staticmethod
    def critic_loss_fn(values, old_values, returns, mask):
        values_clipped = torch.clamp(values, old_values - CLIPRANGE_VALUE, old_values + CLIPRANGE_VALUE)
        vf_loss1 = (values - returns) ** 2
        vf_loss2 = (values_clipped - returns) ** 2
        return 0.5 * torch.sum(torch.max(vf_loss1, vf_loss2) * mask) / mask.sum()

    def train_rlhf(self, inputs):
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
            for i in range(old_rewards.shape[0]):  # zero reward and value after the end of the answer
                old_rewards[i, ends[i]:] = 0
                old_values[i, ends[i]:] = 0
            advantages, returns = self.get_advantages_and_returns(old_values, old_rewards, start)

        logits = self.actor(input_ids=seq, attention_mask=attention_mask, use_cache=False).logits
        actor_log_prob = gather_log_probs(logits[:, :-1, :], seq[:, 1:])
        del logits
        actor_loss = self.actor_loss_fn(actor_log_prob[:, start:], log_probs[:, start:], advantages,
                                        action_mask[:, start:])
        actor_loss.backward()
        self.actor_opt.step()

        value = self.critic.forward_value(seq, attention_mask, return_value_only=True, use_cache=False)[:, :-1]
        critic_loss = self.critic_loss_fn(value[:, start:], old_values[:, start:], returns, action_mask[:, start:])
        critic_loss.backward()
        self.critic_opt.step()
        return actor_loss.detach(), critic_loss.detach()

    def drop_grads(self):
        for model in (self.actor, self.critic):
            model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------------------------
# Measurement

def perf_flops(k, batch, seq, config):
    """DS-Chat's utils/perf.py calculate_flops (the Megatron-LM formula)."""
    L, h, V = config.num_hidden_layers, config.hidden_size, config.vocab_size
    return 24 * k * batch * seq * L * h ** 2 * (1.0 + seq / (6.0 * h) + V / (16.0 * L * h))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_batch(ppo, args, batch, device):
    """--iterations iterations at one batch size; returns the per-iteration phase times."""
    vocab, bos = ppo.actor.config.vocab_size, ppo.actor.config.bos_token_id
    gen = torch.Generator(device="cpu").manual_seed(1234)
    times = []
    for it in range(args.iterations):
        # random prompt ids above the special ids (0..3), BOS first, no padding: every row is prompt-len long
        prompts = torch.randint(4, vocab, (batch, args.prompt_len), generator=gen)
        prompts[:, 0] = bos
        prompts = prompts.to(device)
        mask = torch.ones_like(prompts)
        sync(device)
        t0 = time.perf_counter()
        seq = ppo.generate(prompts, mask, args.answer_len)
        sync(device)
        t1 = time.perf_counter()
        if seq.shape != (batch, args.prompt_len + args.answer_len):
            sys.exit(f"generated {tuple(seq.shape)}, expected ({batch}, {args.prompt_len + args.answer_len})")
        exp = ppo.experience(prompts, seq)
        sync(device)
        t2 = time.perf_counter()
        actor_loss, critic_loss = ppo.train_rlhf(exp)
        sync(device)
        t3 = time.perf_counter()
        del exp, seq
        row = {"generate_s": t1 - t0, "experience_s": t2 - t1, "train_s": t3 - t2, "total_s": t3 - t0,
               "actor_loss": actor_loss.item(), "critic_loss": critic_loss.item()}
        times.append(row)
        print(f"  iteration {it}{' (warm-up)' if it == 0 and args.iterations > 1 else ''}: "
              f"generate {row['generate_s']:.3f} s, experience {row['experience_s']:.3f} s, "
              f"train {row['train_s']:.3f} s, total {row['total_s']:.3f} s "
              f"(actor loss {row['actor_loss']:.4f}, critic loss {row['critic_loss']:.4f})", flush=True)
    return times


def is_oom(exc):
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--answer-len", type=int, default=256)
    parser.add_argument("--batch", default="auto", help="rows per iteration, or 'auto': the largest of "
                        f"{','.join(map(str, AUTO_BATCHES))} that fits (CUDA OOM -> next)")
    parser.add_argument("--iterations", type=int, default=3, help="the first is warm-up; the median of the rest")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--tiny", action="store_true", help="tiny model shapes (CPU smoke test)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.iterations < 1:
        parser.error("--iterations must be >= 1")

    hf_logging.set_verbosity_error()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    shapes = TINY if args.tiny else SHAPES
    if args.prompt_len + args.answer_len > opt_config(shapes["actor"]).max_position_embeddings:
        parser.error("prompt + answer exceeds max_position_embeddings")

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor()
                                                                                    or platform.machine())
    print(f"device: {device_name} ({args.device}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"transformers {transformers.__version__}, python {platform.python_version()}, dtype {args.dtype}{', tiny shapes' if args.tiny else ''}", flush=True)

    t = time.perf_counter()
    ppo = PlainPPO(shapes, dtype, device)
    sync(device)
    n_actor = sum(p.numel() for p in ppo.actor.parameters())
    n_critic = sum(p.numel() for p in ppo.critic.parameters())
    print(f"models built in {time.perf_counter() - t:.1f} s: actor/ref {n_actor / 1e6:.1f} M params, "
          f"critic/reward {n_critic / 1e6:.1f} M params", flush=True)

    candidates = AUTO_BATCHES if args.batch == "auto" else (int(args.batch),)
    times, batch = None, None
    for b in candidates:
        print(f"batch {b}, prompt {args.prompt_len} + answer {args.answer_len} tokens:", flush=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        oom = False
        try:
            times = run_batch(ppo, args, b, device)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
            oom = True
        if not oom:
            batch = b
            break
        # outside the except block, so the traceback's frames (and the tensors they hold) are gone
        print(f"  out of memory at batch {b}", flush=True)
        ppo.drop_grads()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if batch is None:
        sys.exit("out of memory at every batch size tried")

    measured = times[1:] if len(times) > 1 else times
    med = {k: statistics.median(r[k] for r in measured) for k in ("generate_s", "experience_s", "train_s",
                                                                     "total_s")}
    s = args.prompt_len + args.answer_len
    actor_cfg, critic_cfg = ppo.actor.config, ppo.critic.config
    gen_flops = perf_flops(1, batch, s, actor_cfg)
    train_flops = perf_flops(3, batch, s, actor_cfg) + perf_flops(3, batch, s, critic_cfg)
    # not in perf.py: actor + ref forwards (k=1 each) and critic + reward forwards, for reference only
    exp_flops = 2 * perf_flops(1, batch, s, actor_cfg) + 2 * perf_flops(1, batch, s, critic_cfg)
    ds_e2e = med["generate_s"] + med["train_s"]  # DS-Chat main.py's e2e_time: training + generate() only
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    res = {
        "device": device_name, "device_type": args.device, "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(), "dtype": args.dtype,
        "tiny": args.tiny, "batch": batch, "batch_requested": args.batch, "prompt_len": args.prompt_len,
        "answer_len": args.answer_len, "iterations": args.iterations, "warmup_iterations": len(times) - len(measured),
        "actor_params": n_actor, "critic_params": n_critic,
        "generate_s": med["generate_s"], "experience_s": med["experience_s"], "train_s": med["train_s"],
        "total_s": med["total_s"],
        "gen_tokens_per_s": batch * args.answer_len / med["generate_s"],
        "seq_per_s": batch / med["total_s"],
        "peak_memory_bytes": peak,
        "gen_flops": gen_flops, "train_flops": train_flops, "experience_flops_uncounted": exp_flops,
        "gen_tflops": gen_flops / med["generate_s"] / 1e12,
        "train_tflops": train_flops / med["train_s"] / 1e12,
        "effective_tflops": (gen_flops + train_flops) / med["total_s"] / 1e12,
        "ds_chat_e2e_s": ds_e2e, "ds_chat_e2e_tflops": (gen_flops + train_flops) / ds_e2e / 1e12,
        "per_iteration": times,
    }

    print(f"\nwork per iteration (batch {batch}, s = {args.prompt_len} + {args.answer_len} = {s}):")
    print(f"  generate    actor.generate: prefill {batch}x{args.prompt_len}, then {args.answer_len} KV-cache "
          f"decode steps of {batch} rows; counted (perf.py) as one actor forward over s: k=1 -> "
          f"{gen_flops / 1e12:.4g} TFLOP")
    print(f"  experience  actor + ref + critic + reward forwards over {batch}x{s} (no_grad); not counted by "
          f"perf.py ({exp_flops / 1e12:.4g} TFLOP by the same formula), but its time is in the total")
    print(f"  train       actor fwd+bwd (k=3) + critic fwd+bwd (k=3) over {batch}x{s}, 2 AdamW steps "
          f"-> {train_flops / 1e12:.4g} TFLOP")
    print(f"\nmedian of {len(measured)} iteration(s){' after 1 warm-up' if len(times) > 1 else ' (no warm-up)'}:")
    print(f"  batch            {batch}")
    print(f"  generate         {med['generate_s']:.3f} s  ({res['gen_tokens_per_s']:.1f} tokens/s, "
          f"{res['gen_tflops']:.4g} TFLOPs)")
    print(f"  experience       {med['experience_s']:.3f} s")
    print(f"  train            {med['train_s']:.3f} s  ({res['train_tflops']:.4g} TFLOPs)")
    print(f"  iteration        {med['total_s']:.3f} s  ({res['seq_per_s']:.3f} seq/s, "
          f"effective {res['effective_tflops']:.4g} TFLOPs)")
    print(f"  DS-Chat e2e      {ds_e2e:.3f} s  (generate + train, as DS-Chat's main.py: "
          f"{res['ds_chat_e2e_tflops']:.4g} TFLOPs)")
    if peak is not None:
        print(f"  peak memory      {peak / 2 ** 30:.2f} GiB (max_memory_allocated)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
