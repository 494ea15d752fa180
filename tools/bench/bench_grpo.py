#!/usr/bin/env python3
"""One GRPO iteration of `dschat run` (a `grpo` stage) vs TRL's GRPOTrainer (trl 1.16.0, .venv-trl), in the same run.

"batch" here is prompts per iteration: --batch 8 (the default) = 8 prompts x --samples 4 answers = 32 completions
an iteration, all trained in ONE micro-batch and ONE optimizer step on both sides (dschat
per_device_training_batch_size = TRL per_device_train_batch_size = batch x samples, no gradient accumulation).

Both sides load the same weights and prompts, written as tools/bench/bench_ppo.py writes them (its helpers are
imported, not copied): a random OPT (--shape, default 125m = OPT-125m: hidden 768, 12 layers, 12 heads, ffn 3072,
vocab 50272) saved as the "sft" folder with the quickstart byte-level BPE tokenizer (bos = eos = pad = id 0), and
prompts that this tokenizer encodes to exactly --prompt tokens (BOS included). The actor is that folder, the
reference a second copy of it (frozen). Both make exactly --new answer tokens per row (dschat min_new_tokens =
max_new_tokens; TRL max_completion_length = --new with generation_kwargs min_new_tokens = --new, so eos is
suppressed until then), sampled at temperature 1, top_p 1, top_k --top-k (50) on both sides.

dschat side: a generated pipeline with [models.sft] and one stage
  algorithm = "grpo", actor = "sft" (reference = the actor's folder), num_samples = --samples,
  per_device_generation_batch_size = --batch (prompts), per_device_training_batch_size = --batch x --samples,
  ppo_epochs 1, max_steps = --iterations, learning_rate --lr (1e-6), lr_scheduler constant, beta 0.04,
  cliprange 0.2, loss_aggregation "seq-mean" (its GRPO default), std_normalize true, no eval, no checkpoints,
  generation = kv-cache as above, rewards = [{ plugin = "length-penalty", max_tokens = --new }]
Its phases are the stage's metrics time/generation_s, time/experience_s, time/training_s; "other" is the rest of
each iteration, from metrics.jsonl's record times (bench_ppo.dschat_run): mostly the rollout's log-probs
consistency check (a training-path forward of consistency_sample_rows = 2 rows), which is timed in neither phase.

TRL side (.venv-trl/bin/python; tools/bench/setup_trl.sh installs it): GRPOTrainer over the same folder with
  num_generations = --samples, per_device_train_batch_size = --batch x --samples, gradient_accumulation_steps 1
  (generation batch = one step: steps_per_generation 1), num_iterations 1, beta 0.04 (TRL then loads the
  reference model), epsilon 0.2, loss_type "grpo" (= dschat's seq-mean: token mean per answer, mean over answers),
  scale_rewards "group" (= std_normalize), learning_rate --lr, lr_scheduler_type constant, max_grad_norm 1.0,
  no vLLM, no eval, no saving, no logging, gradient_checkpointing off (TRL's default is on), use_cpu
and a Python reward function that is the same length penalty, -max(0, answer tokens - --new) / --new.
Both rewards are 0 for every answer (every answer has exactly --new tokens), so every advantage is 0 on both
sides: the loss is the KL term alone, but neither side skips any work for it (same forwards, backward, step).
TRL's phases, measured around its own methods: generation = GRPOTrainer._generate (prompt tokenization,
model.generate, decoding to text), experience = the rest of _generate_and_score_completions (padding, the
reference forward, rewards, advantages), training = from there to on_step_end (the loss forward with its fused
LM head, backward, clipping, AdamW, scheduler), other = the rest of the step (dataloader, Trainer bookkeeping).

dschat rows (--rows): dschat (as `dschat run` runs by default), dschat-mkl (DSCHAT_CPU_GEMM=mkl: fp32 linears on
MKL's sgemm, the GEMM the TRL side runs; dschat's default on AMD CPUs with AVX-512 is oneDNN's, see
sdk/include/dschat/sdk/nn/onednn_linear.h), dschat-system (DSCHAT_CPU_ALLOCATOR=system, not in the default rows).
The header prints both fp32 GEMM peaks (machine.gemm_line).

--dtype bf16: dschat loads the model in bf16 (fp32 master weights in its engine); TRL gets bf16=True, i.e.
autocast over fp32 weights, as TRL users run it.

Each side runs as a child process (peak RSS of that child alone, tools/bench/rss_launch.py); --iterations per
side, the first a warm-up printed apart; the table keeps per phase the fastest of the other iterations (over
--rounds rounds that alternate the sides) and for "iteration" the fastest whole iteration. Ratio: trl / dschat
(> 1: dschat is faster).

Usage (from the repository root, after tools/build.sh and tools/bench/setup_trl.sh):
  .venv/bin/python tools/bench/bench_grpo.py [--shape 125m|small|tiny] [--batch 8] [--samples 4] [--prompt 64]
      [--new 64] [--iterations 3] [--rounds 1] [--threads N] [--dtype fp32|bf16] [--rows dschat,dschat-mkl,trl] [--keep DIR]
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_ppo as bp  # noqa: E402  (torch, transformers, the model / prompt / child helpers)
import machine  # noqa: E402
import torch  # noqa: E402

ROOT = bp.ROOT
TRL_PYTHON = os.path.join(ROOT, ".venv-trl", "bin", "python")  # trl 1.16.0 (tools/bench/setup_trl.sh)
ROWS = ("dschat", "dschat-system", "dschat-mkl", "trl")
DEFAULT_ROWS = "dschat,dschat-mkl" + (",trl" if os.path.exists(TRL_PYTHON) else "")
LABELS = {"dschat": "dschat", "dschat-system": "system-alloc", "dschat-mkl": "mkl-gemm", "trl": "trl-1.16"}
BETA, EPSILON, LR = 0.04, 0.2, 1e-6

DIFFERENCES = """Work differences, TRL 1.16 GRPOTrainer vs dschat's grpo stage (trl/trainer/grpo_trainer.py, sdk/src/rlhf/):
  - old log-probs: neither side recomputes them. TRL with num_iterations 1 and steps_per_generation 1 sets
    old_per_token_logps = None and uses the training forward's detached log-probs (ratio 1); dschat skips them when
    ppo_epochs 1 and the rollout fits one training micro-batch (steps_before_last_row false), the same way
  - dschat checks each rollout: its generation path's per-token log-probs against a training-path forward of
    consistency_sample_rows (2) rows (the "other" row; time/*_s leave it out); TRL has no such check
  - generation: dschat's kv-cache plugin returns the sampled tokens' log-probs too (for the check); TRL's
    model.generate returns ids only, then TRL decodes every completion to text for the reward functions
  - LM head: TRL 1.16 patches a fused LM head that projects only the completion positions, in tiles, returning
    log-probs (and, in the training forward, entropies) without the [B, T, vocab] logits; dschat runs its LM head
    from the last prompt position on (logits_from = P - 1) and takes log_softmax of those [B, T, vocab] logits
  - training forward: TRL computes per-token entropy too (compute_entropy=True, for its metrics) and metric
    gathers (.item()) for kl, entropy, clip ratios; dschat: loss, clip fraction and kl
  - reference: one no-grad forward of all batch x samples rows on both sides (TRL chunks by
    per_device_train_batch_size, = all rows here)
  - advantages: both (r - group mean) / (unbiased group std + 1e-4) (pg::group_advantages, TRL nanstd); rewards
    here are all 0, so all advantages are 0 on both sides (neither skips work for it)
  - loss: both the clipped surrogate (0.2) + beta (0.04) x k3 KL per token, token mean per answer then mean over
    answers (TRL loss_type "grpo", dschat loss_aggregation "seq-mean"); clip grad norm 1.0 and one AdamW step on
    both (torch's fused AdamW on TRL, dschat's engine's fused AdamW; betas 0.9/0.95 on both: set on TRL)
  - TRL shuffles and splits the generation batch (shuffle_sequence_dict / split_tensor_dict) and its Trainer loop
    adds the dataloader (RepeatSampler) and callbacks ("other")"""


# ---------------------------------------------------------------------------------------------------------------
# dschat

def write_pipeline(root, dirs, args, prompt_texts, name="bench-grpo.toml"):
    with open(os.path.join(root, "prompts.jsonl"), "w") as out:
        for text in prompt_texts:
            out.write(json.dumps({"prompt": text, "response": " Fine.", "chosen": " Good.", "rejected": " Bad."}) + "\n")
    toml = f"""# Written by tools/bench/bench_grpo.py
[pipeline]
name = "bench-grpo"
output_dir = "run"
seed = 1234

[models.sft]
path = "{dirs['sft']}"
dtype = "{args.dtype}"

[data]
datasets = ["prompts.jsonl"]
split = [0, 0, 1]
eval_fraction = 0.0
max_seq_len = {args.prompt + args.new}
max_prompt_seq_len = {args.prompt}

[[stage]]
name = "grpo"
algorithm = "grpo"
actor = "sft"
num_samples = {args.samples}
per_device_generation_batch_size = {args.batch}
per_device_training_batch_size = {args.batch * args.samples}
epochs = 1
max_steps = {args.iterations}
ppo_epochs = 1
learning_rate = {args.lr}
lr_scheduler = "constant"
beta = {BETA}
cliprange = {EPSILON}
loss_aggregation = "seq-mean"
std_normalize = true
generation = {{ plugin = "kv-cache", max_new_tokens = {args.new}, min_new_tokens = {args.new}, do_sample = true, top_k = {args.top_k} }}
rewards = [{{ plugin = "length-penalty", max_tokens = {args.new} }}]
"""
    path = os.path.join(root, name)
    with open(path, "w") as out:
        out.write(toml)
    return path


# ---------------------------------------------------------------------------------------------------------------
# TRL

def trl_side(root, dirs, texts, args):
    if not os.path.exists(args.trl_python):
        sys.exit(f"the trl row needs {args.trl_python}: run tools/bench/setup_trl.sh")
    spec = os.path.join(root, "trl_grpo_spec.json")
    with open(spec, "w") as out:
        json.dump({"sft": dirs["sft"], "texts": texts, "batch": args.batch, "samples": args.samples,
                   "prompt": args.prompt, "new": args.new, "iterations": args.iterations, "dtype": args.dtype,
                   "threads": args.threads, "top_k": args.top_k, "lr": args.lr,
                   "out": os.path.join(root, "trl_grpo_out")}, out)
    rc, out, err, wall, rss = machine.run_child([args.trl_python, os.path.abspath(__file__), "--child-trl", spec],
                                                bp.child_env(args.threads))
    if rc != 0:
        sys.exit(f"the TRL GRPO failed ({rc}):\n{out[-4000:]}\n{err[-4000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    bp.CHILD_NOTES["trl"] = result["notes"]
    return result["times"], wall, rss


def trl_child(spec_path):
    import warnings
    warnings.filterwarnings("ignore")
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    bp.hf_logging.set_verbosity_error()
    bp.hf_logging.disable_progress_bar()
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    import trl
    from trl import GRPOConfig, GRPOTrainer
    disable_progress_bar()

    batch, samples, prompt, new = spec["batch"], spec["samples"], spec["prompt"], spec["new"]
    rows = batch * samples
    tokenizer = AutoTokenizer.from_pretrained(spec["sft"])
    model = AutoModelForCausalLM.from_pretrained(spec["sft"], dtype=torch.float32)
    dataset = Dataset.from_dict({"prompt": spec["texts"]})

    def length_penalty(completion_ids, **kwargs):  # the length-penalty plugin's rule, max_tokens = --new
        return [-max(0, len(c) - new) / new for c in completion_ids]

    config = GRPOConfig(
        output_dir=spec["out"], report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no",
        disable_tqdm=True, seed=1234, use_cpu=True, dataloader_num_workers=0, log_completions=False,
        bf16=spec["dtype"] == "bf16", fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=rows, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=samples, num_iterations=1, max_steps=spec["iterations"],
        max_completion_length=new, generation_kwargs={"min_new_tokens": new},
        temperature=1.0, top_p=1.0, top_k=spec["top_k"],
        beta=BETA, epsilon=EPSILON, loss_type="grpo", scale_rewards="group",
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0)

    marks, times, shapes = {}, [], []

    class PhaseTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks["last"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            t = {"generation": marks["gen_end"] - marks["gen_start"], "experience": marks["exp_end"] - marks["gen_end"],
                 "training": now - marks["exp_end"]}
            t["other"] = max(0.0, now - marks["last"] - sum(t.values()))
            times.append(t)
            marks.clear()
            marks["last"] = now

    class TimedGRPO(GRPOTrainer):
        def _generate(self, prompts):
            marks["gen_start"] = time.perf_counter()
            out = super()._generate(prompts)
            marks["gen_end"] = time.perf_counter()
            prompt_ids, completion_ids = out[0], out[1]
            shapes.append((len(prompt_ids), sorted({len(p) for p in prompt_ids}), sorted({len(c) for c in completion_ids})))
            return out

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            marks["exp_end"] = time.perf_counter()
            return out

    trainer = TimedGRPO(model=model, reward_funcs=[length_penalty], args=config, train_dataset=dataset,
                        processing_class=tokenizer, callbacks=[PhaseTimer()])
    trainer.train()
    for n, plens, clens in shapes:
        if n != rows or plens != [prompt] or clens != [new]:
            sys.exit(f"TRL generated {n} rows, prompt lengths {plens}, completion lengths {clens}; expected {rows} "
                     f"rows of {prompt} + {new}")
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    notes = [f"trl {trl.__version__}: optimizer {type(opt).__name__}(fused={opt.defaults.get('fused')}, betas="
             f"{opt.defaults.get('betas')}) ({config.optim}), mixed precision {trainer.accelerator.mixed_precision}, "
             f"reference model {'loaded' if trainer.ref_model is not None else 'none'}, loss_type {trainer.loss_type}, "
             f"generation {len(shapes)} x {rows} rows of {prompt} + {new} tokens (checked), "
             f"top_k {config.top_k}, generation_batch_size {config.generation_batch_size}, "
             f"steps_per_generation {config.steps_per_generation}"]
    print(json.dumps({"times": times, "notes": notes}), flush=True)


# ---------------------------------------------------------------------------------------------------------------

def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--child-trl":
        return trl_child(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--shape", choices=sorted(bp.SHAPES), default="125m")
    parser.add_argument("--batch", type=int, default=8, help="prompts per iteration (completions = batch x samples)")
    parser.add_argument("--samples", type=int, default=4, help="answers per prompt (dschat num_samples = TRL "
                                                                "num_generations)")
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens (BOS included)")
    parser.add_argument("--new", type=int, default=64, help="answer tokens (min = max new tokens)")
    parser.add_argument("--iterations", type=int, default=3, help="GRPO iterations per side; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--top-k", type=int, default=bp.TOP_K, help="top-k sampling on both sides (0: off)")
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="a subset of " + ",".join(ROWS))
    parser.add_argument("--trl-python", default=TRL_PYTHON, help="the trl row's interpreter (trl 1.16.0)")
    parser.add_argument("--keep", help="write the model, prompts and pipeline here and keep them")
    args = parser.parse_args()
    if args.iterations < 2:
        sys.exit("--iterations must be >= 2 (the first is warm-up)")
    if args.samples < 2:
        sys.exit("--samples must be >= 2 (GRPO compares the answers to one prompt)")
    rows = [r for r in args.rows.split(",") if r]
    for r in rows:
        if r not in ROWS:
            sys.exit(f"--rows: unknown row {r!r} (known: {', '.join(ROWS)})")
    dschat = os.path.join(args.build, "bin", "dschat")
    plugins = os.path.join(args.build, "lib", "dschat", "plugins")
    if any(r.startswith("dschat") for r in rows):
        for path in (dschat, *(os.path.join(plugins, f"libdschat-{p}.so") for p in ("opt", "grpo", "kv-cache",
                                                                                     "length-penalty"))):
            if not os.path.exists(path):
                sys.exit(f"{path} is missing: run tools/build.sh first")

    torch.set_num_threads(args.threads)
    bp.hf_logging.set_verbosity_error()
    bp.hf_logging.disable_progress_bar()
    for line in machine.describe(args.threads):
        print(line)
    print(machine.gemm_line(args.threads), flush=True)
    tokenizer_dir = os.path.join(ROOT, "configs", "quickstart", "model")
    tokenizer = bp.Tokenizer.from_file(os.path.join(tokenizer_dir, "tokenizer.json"))
    shape = bp.SHAPES[args.shape]
    completions = args.batch * args.samples
    print(f"GRPO iteration, OPT {args.shape} shape (hidden {shape['hidden_size']}, {shape['num_hidden_layers']} "
          f"layers, {shape['num_attention_heads']} heads, ffn {shape['ffn_dim']}, vocab {shape['vocab_size']}), "
          f"random weights, {args.dtype}; batch {args.batch} prompts x {args.samples} samples = {completions} "
          f"completions an iteration, one micro-batch, one optimizer step; prompt {args.prompt} + {args.new} sampled "
          f"tokens (top_k {args.top_k}, temperature 1); beta {BETA}, clip {EPSILON}, lr {args.lr:g}, seq-mean loss; "
          f"reference loaded, rule reward (length penalty, 0 for every answer); best of {args.rounds} round(s) x "
          f"{args.iterations - 1} iterations after 1 warm-up; {args.threads} threads", flush=True)

    tmp = args.keep or tempfile.mkdtemp(prefix="bench_grpo_")
    os.makedirs(tmp, exist_ok=True)
    try:
        _, dirs = bp.write_models(tmp, args.shape, tokenizer_dir)
        texts, _ = bp.make_prompts(tokenizer, args.iterations * args.batch, args.prompt)
        toml = write_pipeline(tmp, dirs, args, texts)
        times = {r: [] for r in rows}
        warm, wall, rss = {}, {r: float("inf") for r in rows}, {r: 0.0 for r in rows}
        for _ in range(args.rounds):
            for row in rows:
                if row == "trl":
                    steps, w, m = trl_side(tmp, dirs, texts, args)
                else:
                    steps, w, m = bp.dschat_run(dschat, toml, tmp, args.threads, stage="grpo",
                                                allocator="system" if row == "dschat-system" else None,
                                                gemm="mkl" if row == "dschat-mkl" else None)
                if len(steps) != args.iterations:
                    sys.exit(f"{row} logged {len(steps)} iterations, expected {args.iterations}")
                times[row] += steps[1:]
                warm.setdefault(row, steps[0])
                wall[row] = min(wall[row], w)
                rss[row] = max(rss[row], m)
        b = {r: bp.best(times[r]) for r in rows}
        w = {r: bp.best([warm[r]]) for r in rows}
        bp.print_table(rows, b, w, rss, wall, LABELS, ref="dschat" if "dschat" in rows else rows[0],
                       ratio_rows=("dschat-system", "dschat-mkl", "trl"),
                       wall_note="   (whole child: loading actor + reference, every iteration, saving)")
        print("other: what the phases leave out of the whole iteration. dschat: its consistency check and logging "
              "(metrics.jsonl times); trl: the Trainer loop around training_step (dataloader, callbacks)")
        for row in rows:
            print(f"per-iteration seconds, {LABELS[row]}: "
                  f"{[round(sum(x.get(p, 0.0) for p in (*bp.PHASES, 'other')), 2) for x in times[row]]}")
        for row in rows:
            for note in bp.CHILD_NOTES.get(row, []):
                print(f"{LABELS[row]}: {note}")
        if "trl" in rows:
            print(DIFFERENCES)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
