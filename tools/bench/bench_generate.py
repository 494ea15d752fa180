#!/usr/bin/env python3
"""Greedy decode speed of dschat's `kv-cache` plugin vs transformers' generate, as shares of the machine's
read-bandwidth bound, measured in the same run.

The model. Default: an OPT-125m-shaped model (hidden 768, 12 layers, 12 heads, vocab 50272) with random
weights, saved once with save_pretrained so that both sides load identical weights. --model DIR: any HF folder
whose config.json model_type has a dschat family plugin (e.g. tools/fetch_smollm2.sh's SmolLM2-135M-Instruct).
Both sides load the folder's weights and convert them to the run's dtype (f32, bf16) at load time.

The prompts. Left-padded, row lengths between half and all of --prompt (row 0: all), padded with config.json's
pad_token_id, else its eos_token_id (what the C++ driver uses, tools/bench/bench_generate.cpp). With a random
model: random token ids from the vocab. With --model and a tokenizer in the folder: real chat prompts, the
tokenizer's chat template around a user message of notes (sentences from a fixed pool, shuffled per row) and a
question, grown sentence by sentence to at most the row's length. A real model is confident on real text, so
token agreement then tests the kernels rather than the tie-breaking of a random model's flat logits. Greedy, no
eos (every row makes --new tokens).

The rows, each a subprocess of its own (so LD_PRELOAD applies from process start), started through a small
launcher (tools/bench/rss_launch.py, no torch) whose os.wait4 gives the row's own peak RSS:
  dschat kv-cache, caching   build/bin/bench_generate (family plugin from config.json, the kv-cache plugin:
                             one KV cache preallocated for prompt + new, prefill, one batched token per step),
                             dschat's caching CPU allocator (its default)
  dschat kv-cache, system    the same with DSCHAT_CPU_ALLOCATOR=system (LibTorch's allocator on glibc malloc)
  dschat kv-cache, jemalloc  DSCHAT_CPU_ALLOCATOR=system with LD_PRELOAD=libjemalloc.so.2
  HF dynamic, glibc          this script --hf-worker: model.generate(do_sample=False), the default DynamicCache
                             (grows by torch.cat each step), SDPA attention with the 4D causal + padding mask
                             transformers builds from the 2D attention_mask
  HF dynamic, jemalloc       the same with LD_PRELOAD=libjemalloc.so.2
  HF static, glibc           generate(cache_implementation="static"): a StaticCache preallocated for prompt + new
                             tokens; each step attends over the whole preallocated length under the mask.
                             transformers compiles the forward for a static cache only on accelerators
                             (_valid_auto_compile_criteria), so on CPU this is eager, as users get it
  HF static, jemalloc        the same with LD_PRELOAD=libjemalloc.so.2
The rows alternate for --rounds rounds (a busy machine slows all alike); each keeps its best time. Each row is
also timed with one new token (prefill + one pick), so decode tokens/s = batch * (new - 1) / (t(new) - t(1));
end-to-end tokens/s = batch * new / t(new) (prefill included).

The bound. bytes read per decode step = every weight the step reads (all non-embedding tensors: linears, norms,
biases; the LM head, which for tied embeddings is the embedding matrix, read once; the input token / position
embedding lookups read only batch rows), counted from the folder's safetensors headers at the run's dtype, plus
the KV cache read, 2 * layers * kv_heads * head_dim * cached_len * batch * dtype bytes at the mean cached length
(padded prompt width + new / 2). bound tokens/s = batch * read bandwidth / bytes per step, with the bandwidth
of machine.read_bandwidth_gbs measured once at the start of this run; share = measured decode tokens/s / bound.

Token agreement, fair to bf16: every row's tokens are compared with HF dynamic (glibc). Per row of the batch,
the first position where they differ; at such a position p, HF's scores at step p (generate(output_scores=True,
return_dict_in_generate=True), an untimed extra run, best 8 logits kept per step) tell whether it was a
near-tie: HF's logit l2 for the other side's token is within 2 bf16 ulps of HF's best l1, |l1 - l2| <= 2 *
2**(floor(log2 x) - 7) with x = max(|l1|, |l2|) (so HF's top 2 are tied at least as closely; a pick that is HF's
third of a three-way tie counts, one outside HF's best 8 does not). Printed: "rows
equal for the first 32 tokens or diverging only after a near-tie: k/B" and the share of all tokens that agree.

--scaling: decode tokens/s for batch 1/8/32 x prompt 64/256/1024 (--batches / --prompts override), dschat
(caching) and HF static and dynamic (glibc), 32 new tokens, one iteration, one round, bf16 unless --dtypes.

Usage: bench_generate.py [--model DIR] [--build build] [--batches 8,32] [--prompt 256] [--new 256]
                         [--dtypes f32,bf16] [--rows ...] [--rounds 2] [--quick] [--scaling]
"""
import argparse
import json
import math
import os
import random
import shlex
import struct
import subprocess
import sys
import tempfile
import time


import torch  # noqa: E402
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
ELEMENT_BYTES = {"f32": 4, "bf16": 2}
AGREE_PREFIX = 32  # "rows equal for the first 32 tokens"
TOP_K = 8  # HF's best logits kept per step for the near-tie check

# key -> (label, side, environment on top of a clean one)
ROWS = {
    "dschat": ("dschat kv-cache, caching", "dschat", {}),
    "dschat-system": ("dschat kv-cache, system", "dschat", {"DSCHAT_CPU_ALLOCATOR": "system"}),
    "dschat-jemalloc": ("dschat kv-cache, jemalloc", "dschat", {"DSCHAT_CPU_ALLOCATOR": "system", "LD_PRELOAD": "@"}),
    "hf-dynamic": ("HF dynamic, glibc", "dynamic", {}),
    "hf-dynamic-jemalloc": ("HF dynamic, jemalloc", "dynamic", {"LD_PRELOAD": "@"}),
    "hf-static": ("HF static, glibc", "static", {}),
    "hf-static-jemalloc": ("HF static, jemalloc", "static", {"LD_PRELOAD": "@"}),
}
REFERENCE = "hf-dynamic"

SENTENCES = [
    "The library opens at nine in the morning and closes at six in the evening on weekdays.",
    "A kilogram of feathers weighs exactly as much as a kilogram of iron.",
    "Honey found in ancient tombs was still edible after thousands of years.",
    "The train to the coast leaves every hour from the second platform.",
    "Octopuses have three hearts and blue blood.",
    "Our team meeting moved from Tuesday to Thursday because of the holiday.",
    "Water boils at a lower temperature on a high mountain than at sea level.",
    "The bakery on the corner sells fresh bread until it runs out, usually before noon.",
    "Bananas are berries, but strawberries are not.",
    "The new bridge shortened the drive to the airport by twenty minutes.",
    "Venus spins so slowly that a day there lasts longer than its year.",
    "Remember to water the tomato plants twice a week during the summer.",
    "Sharks existed before trees appeared on land.",
    "The museum offers free entry on the first Sunday of every month.",
    "A group of flamingos is called a flamboyance.",
    "The printer on the third floor needs a new toner cartridge.",
    "Light from the Sun takes about eight minutes to reach the Earth.",
    "Our neighbours adopted a small grey cat that likes to sleep on the fence.",
    "The Eiffel Tower can be about fifteen centimetres taller in summer because the iron expands.",
    "The recipe asks for two eggs, a cup of flour and a pinch of salt.",
    "Wombats produce cube-shaped droppings.",
    "The concert was postponed because the lead singer lost her voice.",
    "There are more possible games of chess than atoms in the observable universe.",
    "The city plans to plant a thousand new trees along the river next spring.",
]
QUESTIONS = [
    "Which of these notes is the most surprising, and why?",
    "Summarize these notes in three short bullet points.",
    "Which of these notes are facts about nature, and which are about daily life?",
    "Write a short story that uses two of these notes.",
]


# ---------------------------------------------------------------------------------------------------------------
# Model facts from config.json and the safetensors headers (never hard-coded).

def read_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)


def pad_token_id(config):
    """As tools/bench/bench_generate.cpp: pad_token_id, else eos_token_id (integers only), else 0."""
    for key in ("pad_token_id", "eos_token_id"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return 0


def shape(config):
    layers = config.get("num_hidden_layers") or config.get("n_layer")
    heads = config.get("num_attention_heads") or config.get("n_head")
    hidden = config.get("hidden_size") or config.get("n_embed")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    return {"layers": layers, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim, "hidden": hidden}


def safetensors_shapes(model_dir):
    shapes = {}
    for name in sorted(os.listdir(model_dir)):
        if not name.endswith(".safetensors"):
            continue
        with open(os.path.join(model_dir, name), "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for tensor, info in header.items():
            if tensor != "__metadata__":
                shapes[tensor] = info["shape"]
    if not shapes:
        sys.exit(f"no *.safetensors in {model_dir}")
    return shapes


def is_lookup(name, dims):
    """Token / position embedding tables: a step reads one row per sequence of them."""
    last = name.split(".")[-2] if "." in name else name
    return len(dims) == 2 and ("embed" in last or last in ("wte", "wpe"))


class StepBytes:
    """What one decode step reads, in parameters (elements) and KV-cache elements."""

    def __init__(self, model_dir, config):
        shapes = safetensors_shapes(model_dir)
        # Tied: the folder stores no lm_head (save_pretrained drops the tied copy) or config.json says so.
        self.tied = config.get("tie_word_embeddings") is True or not any(n.endswith("lm_head.weight") for n in shapes)
        self.parameters = sum(math.prod(d) for d in shapes.values())
        self.dense = 0        # read whole every step
        self.lookup_rows = 0  # sum of the lookup tables' row widths: batch rows of each are read
        self.lm_head = 0
        for name, dims in shapes.items():
            numel = math.prod(dims)
            if name.endswith("lm_head.weight"):
                if not self.tied:
                    self.dense += numel
                    self.lm_head = numel
            elif is_lookup(name, dims):
                self.lookup_rows += dims[1]
                if self.tied and dims[0] == config.get("vocab_size") and not self.lm_head:
                    self.lm_head = numel  # the tied LM head: the token embedding matrix, read once
                    self.dense += numel
            else:
                self.dense += numel
        self.shape = shape(config)

    def kv_elements(self, batch, cached_len):
        s = self.shape
        return 2 * s["layers"] * s["kv_heads"] * s["head_dim"] * cached_len * batch

    def per_step(self, batch, cached_len, dtype):
        b = ELEMENT_BYTES[dtype]
        weights = (self.dense + batch * self.lookup_rows) * b
        kv = self.kv_elements(batch, cached_len) * b
        return weights, kv

    def bound(self, batch, cached_len, dtype, bandwidth_gbs):
        weights, kv = self.per_step(batch, cached_len, dtype)
        return batch * bandwidth_gbs * 1e9 / (weights + kv)


# ---------------------------------------------------------------------------------------------------------------
# Prompts

def random_prompts(batch, length, vocab, pad):
    g = torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    lengths = torch.randint(max(1, length // 2), length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length).unsqueeze(0) >= (length - lengths).unsqueeze(1)).long()
    return ids.masked_fill(mask == 0, pad), mask


def chat_prompts(tokenizer, batch, length, pad):
    """Chat-templated notes + question, each row at most its length (between length / 2 and length)."""
    rng = random.Random(batch * 1000 + length)
    rows = []
    for r in range(batch):
        target = length if r == 0 else rng.randint(max(1, length // 2), length)
        question = QUESTIONS[r % len(QUESTIONS)]
        pool, notes, ids = [], [], None
        while True:
            if not pool:
                pool = SENTENCES[:]
                rng.shuffle(pool)
            candidate = notes + [pool.pop()]
            text = "Here are some notes:\n" + "\n".join(f"- {s}" for s in candidate) + "\n\n" + question
            tokens = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                   tokenize=True, return_dict=True)["input_ids"]
            if len(tokens) > target and ids is not None:
                break
            notes, ids = candidate, tokens
            if len(tokens) > target:  # even one note is too long: cut from the left
                ids = tokens[-target:]
                break
        rows.append(ids)
    width = max(len(r) for r in rows)
    ids = torch.full((batch, width), pad, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = torch.tensor(row)
        mask[r, width - len(row):] = 1
    return ids, mask


# ---------------------------------------------------------------------------------------------------------------
# The HF side, in a subprocess: --hf-worker

def hf_worker(args):
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    prompts = load_file(args.prompt_file)
    ids, mask = prompts["input_ids"], prompts["attention_mask"]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype],
                                                 attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = None  # no early stop: every row makes every token
    pad = pad_token_id(read_config(args.model))
    kwargs = dict(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=pad)
    if args.cache == "static":
        kwargs["cache_implementation"] = "static"

    def time_it(tokens):
        best, median, out = [], None, None
        with torch.no_grad():
            for i in range(args.iterations + 1):  # the first run warms up
                start = time.perf_counter()
                out = model.generate(max_new_tokens=tokens, **kwargs)
                if i > 0:
                    best.append((time.perf_counter() - start) * 1e3)
        best.sort()
        return best, out

    prefill, _ = time_it(1)  # as the C++ driver: one token first, then all
    ms, out = time_it(args.new)
    result = {"min_ms": ms[0], "median_ms": ms[len(ms) // 2], "prefill_ms": prefill[0],
              "tokens": out[:, ids.shape[1]:].tolist(),
              "attn": model.config._attn_implementation, "param_dtype": str(next(model.parameters()).dtype),
              "threads": torch.get_num_threads(), "transformers": transformers.__version__,
              "jemalloc_loaded": jemalloc_loaded()}
    if args.scores:
        with torch.no_grad():
            gen = model.generate(max_new_tokens=args.new, output_scores=True, return_dict_in_generate=True, **kwargs)
        cache = type(getattr(gen, "cache", None) or getattr(gen, "past_key_values", None)).__name__
        top = torch.stack(gen.scores).float().topk(TOP_K, dim=-1)  # [new, batch, TOP_K]
        result.update(top_values=top.values.tolist(), top_ids=top.indices.tolist(), cache_class=cache,
                      scored_tokens=gen.sequences[:, ids.shape[1]:].tolist())
    print(json.dumps(result))


def jemalloc_loaded():
    try:
        with open("/proc/self/maps") as f:
            return "jemalloc" in f.read()
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# Running rows

def run_child(argv, env):
    """Runs argv through machine.run_child's launcher; (its last stdout line as JSON, its own peak RSS in MB)."""
    rc, out, err, _, rss = machine.run_child(argv, env)
    if rc != 0:
        sys.exit(f"{shlex.join(argv)} failed ({rc}):\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1]), rss


class Runner:
    def __init__(self, args, model_dir, jemalloc):
        self.args, self.model_dir, self.jemalloc = args, model_dir, jemalloc
        self.driver = os.path.join(args.build, "bin", "bench_generate")
        self.plugins = os.path.join(args.build, "lib", "dschat", "plugins")
        self.base_env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "DSCHAT_CPU_ALLOCATOR")}
        self.printed = set()

    def command(self, key, prompt_file, new, dtype, iterations, scores=False):
        _, side, extra = ROWS[key]
        env = {k: (self.jemalloc if v == "@" else v) for k, v in extra.items()}
        if side == "dschat":
            argv = [self.driver, self.plugins, self.model_dir, prompt_file, str(new), dtype, str(iterations),
                    str(self.args.threads)]
        else:
            argv = [sys.executable, os.path.abspath(__file__), "--hf-worker", "--model", self.model_dir,
                    "--prompt-file", prompt_file, "--new", str(new), "--dtypes", dtype, "--iterations",
                    str(iterations), "--threads", str(self.args.threads), "--cache", side]
            if scores:
                argv.append("--scores")
        return argv, env

    def run(self, key, prompt_file, new, dtype, iterations, scores=False):
        argv, env = self.command(key, prompt_file, new, dtype, iterations, scores)
        shown = " ".join(f"{k}={v}" for k, v in env.items())
        line = (shown + " " if shown else "") + shlex.join(argv)
        if self.args.verbose or (key, dtype) not in self.printed:
            print(f"  run: {line}", flush=True)
            self.printed.add((key, dtype))
        result, rss = run_child(argv, {**self.base_env, **env})
        result["rss_mb"] = rss
        return result


def first_difference(a, b):
    for p, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return p
    return None


def near_tie(values, ids, token):
    """HF's best logits at one step (values, ids: best first) and the other side's pick there: a near-tie when
    HF's logit for the pick is within 2 bf16 ulps of HF's best, |l1 - l2| <= 2 * 2**(floor(log2 x) - 7) with
    x = max(|l1|, |l2|). Then HF's top 2 are tied as closely, and three-way ties count too."""
    if token not in ids:
        return False
    l1, l2 = values[0], values[ids.index(token)]
    x = max(abs(l1), abs(l2))
    tolerance = 2 * 2.0 ** (math.floor(math.log2(x)) - 7) if x > 0 else 0.0
    return abs(l1 - l2) <= tolerance


def agreement(tokens, reference):
    """(share of equal tokens, [first differing position or None per batch row], near-tie flags per row)."""
    ours, theirs = torch.tensor(tokens), torch.tensor(reference["tokens"])
    share = (ours == theirs).float().mean().item()
    firsts = [first_difference(a, b) for a, b in zip(tokens, reference["tokens"])]
    ties = []
    for r, p in enumerate(firsts):
        if p is None or "top_values" not in reference:
            ties.append(False)
        else:
            ties.append(near_tie(reference["top_values"][p][r], reference["top_ids"][p][r], tokens[r][p]))
    return share, firsts, ties


def rates(result, batch, new):
    gap = result["min_ms"] - result["prefill_ms"]
    decode = batch * (new - 1) * 1e3 / gap if gap > 0 else float("nan")  # nan: noise beat the decode time
    return decode, batch * new * 1e3 / result["min_ms"]


# ---------------------------------------------------------------------------------------------------------------

def prepare_model(args, tmp):
    if args.model:
        model_dir = os.path.abspath(args.model)
        config = read_config(model_dir)
        tokenizer = None
        if os.path.exists(os.path.join(model_dir, "tokenizer.json")) or os.path.exists(
                os.path.join(model_dir, "tokenizer_config.json")):
            from transformers import AutoTokenizer
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            if not tokenizer.chat_template:
                tokenizer = None
        return model_dir, config, tokenizer, f"{model_dir} ({config.get('model_type')})"
    from transformers import OPTConfig, OPTForCausalLM
    torch.manual_seed(0)
    config = OPTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
                       vocab_size=50272, max_position_embeddings=2048, attn_implementation="sdpa",
                       pad_token_id=1, bos_token_id=2, eos_token_id=2)
    model_dir = os.path.join(tmp, "model")
    OPTForCausalLM(config).save_pretrained(model_dir)
    return model_dir, read_config(model_dir), None, "OPT-125m shape (hidden 768, 12 layers, 12 heads), random weights"


def make_prompts(tokenizer, config, batch, length, tmp):
    pad = pad_token_id(config)
    if tokenizer is not None:
        ids, mask = chat_prompts(tokenizer, batch, length, pad)
    else:
        ids, mask = random_prompts(batch, length, config["vocab_size"], pad)
    path = os.path.join(tmp, f"prompts-{batch}-{length}.safetensors")
    save_file({"input_ids": ids.contiguous(), "attention_mask": mask.contiguous()}, path)
    return path, ids, mask


def print_header(args, description, config, step, tokenizer, bandwidth, jemalloc, dtypes):
    for line in machine.describe(args.threads):
        print(line)
    print(f"read bandwidth (machine.read_bandwidth_gbs, torch.sum over 1 GiB, {args.threads} threads): "
          f"{bandwidth:.1f} GB/s")
    s = step.shape
    print(f"model: {description}; {step.parameters / 1e6:.1f} M parameters; {s['layers']} layers, "
          f"{s['heads']} heads / {s['kv_heads']} kv heads x {s['head_dim']}; "
          f"{'tied' if step.tied else 'separate'} LM head; dtypes {', '.join(dtypes)} (both sides convert at load)")
    print(f"bytes per decode step: {step.dense / 1e6:.1f} M dense parameters (LM head {step.lm_head / 1e6:.1f} M) "
          f"+ batch x {step.lookup_rows} embedding-lookup elements + KV "
          f"2 x {s['layers']} x {s['kv_heads']} x {s['head_dim']} x cached_len x batch, at the mean cached length")
    kind = "chat prompts (chat template, notes + a question)" if tokenizer is not None else "random token ids"
    lengths = (f"longest {args.prompts} (one table row each)" if args.scaling else
               f"lengths {args.prompt // 2}..{args.prompt} (row 0: the longest)")
    print(f"prompts: {kind}, left-padded with id {pad_token_id(config)}, {lengths}; {args.new} new tokens, greedy, no eos; {args.threads} threads; "
          f"best of {args.rounds} rounds x {args.iterations} iterations (+1 warm-up each)")
    print(f"dschat: {os.path.join(args.build, 'bin', 'bench_generate')}, plugins libdschat-{config.get('model_type')}.so "
          f"+ libdschat-kv-cache.so (preallocated KV cache, prefill, one batched token per step)")
    print("HF: transformers generate(do_sample=False), SDPA attention with the 4D mask built from attention_mask; "
          "dynamic = DynamicCache (torch.cat per step), static = StaticCache(prompt + new), no torch.compile on CPU")
    print("each row: one subprocess (the 'run:' lines), started via tools/bench/rss_launch.py, whose os.wait4 gives "
          "the row's own peak RSS")
    print(f"jemalloc: {jemalloc or 'libjemalloc.so.2 not found (apt-get install libjemalloc2): jemalloc rows skipped'}")


def main_rows(args, runner, step, tokenizer, config, bandwidth, tmp, dtypes, keys):
    ref_scores = True
    print(f"{'dtype':5} {'batch':>5} {'row':26} | {'decode tok/s':>12} {'bound':>6} | {'e2e tok/s':>9} | "
          f"{'peak RSS':>8} | {'agree':>6} {'rows differing (first position)':s}")
    for dtype in dtypes:
        for batch in (int(b) for b in args.batches.split(",")):
            prompt_file, ids, _ = make_prompts(tokenizer, config, batch, args.prompt, tmp)
            width = ids.shape[1]
            cached = width + args.new / 2
            weights, kv = step.per_step(batch, cached, dtype)
            bound = step.bound(batch, cached, dtype, bandwidth)
            print(f"{dtype:5} {batch:5d} bytes per step {weights / 1e6:.1f} MB weights + {kv / 1e6:.1f} MB KV "
                  f"(prompt width {width}, mean cached length {cached:.0f}): bound {bound:.0f} tok/s", flush=True)
            best = {}
            for round_ in range(args.rounds):
                for key in keys:
                    scores = ref_scores and key == REFERENCE and round_ == args.rounds - 1
                    result = runner.run(key, prompt_file, args.new, dtype, args.iterations, scores)
                    if key in best:
                        old = best[key]
                        result["rss_mb"] = max(result["rss_mb"], old["rss_mb"])
                        for field in ("min_ms", "prefill_ms"):
                            result[field] = min(result[field], old[field])
                        for field in ("top_values", "top_ids", "cache_class", "scored_tokens"):
                            if field in old and field not in result:
                                result[field] = old[field]
                    best[key] = result
            reference = best[REFERENCE]
            if reference.get("scored_tokens") not in (None, reference["tokens"]):
                print("  warning: HF's scored run made other tokens than its timed run")
            print(f"  HF reports: attention {reference.get('attn')}, parameters {reference.get('param_dtype')}, "
                  f"cache {reference.get('cache_class')}, {reference.get('threads')} threads, "
                  f"transformers {reference.get('transformers')}; jemalloc loaded in HF jemalloc rows: "
                  f"{[best[k].get('jemalloc_loaded') for k in keys if k.startswith('hf-') and 'jemalloc' in k]}")
            summary = []
            for key in keys:
                r = best[key]
                decode, e2e = rates(r, batch, args.new)
                share, firsts, ties = agreement(r["tokens"], reference)
                differing = [(i, p) for i, p in enumerate(firsts) if p is not None]
                text = ", ".join(f"{i}@{p}{'~' if ties[i] else ''}" for i, p in differing[:8])
                text += " ..." if len(differing) > 8 else ""
                print(f"{dtype:5} {batch:5d} {ROWS[key][0]:26} | {decode:12.1f} {decode / bound:6.1%} | {e2e:9.1f} | "
                      f"{r['rss_mb']:6.0f}MB | {share:6.1%} {len(differing)}/{batch}{': ' + text if text else ''}",
                      flush=True)
                if key != REFERENCE:
                    prefix = min(AGREE_PREFIX, args.new)
                    fair = sum(1 for p, t in zip(firsts, ties) if p is None or p >= prefix or t)
                    summary.append(f"  {ROWS[key][0]} vs HF dynamic: rows equal for the first {prefix} tokens "
                                   f"or diverging only after a near-tie: {fair}/{batch}; tokens agree {share:.1%}")
                    for i, p in differing:
                        if ties[i] or "top_values" not in reference:
                            continue
                        values, ids = reference["top_values"][p][i], reference["top_ids"][p][i]
                        pick = r["tokens"][i][p]
                        theirs = f"{values[ids.index(pick)]:g}" if pick in ids else f"not in HF's best {TOP_K}"
                        summary.append(f"    row {i} at {p}, no near-tie: HF's best {ids[0]} ({values[0]:g}), "
                                       f"this row's {pick} ({theirs})")
                r["decode"], r["e2e"] = decode, e2e
            for line in summary:
                print(line)
            ours = [best[k] for k in keys if ROWS[k][1] == "dschat"]
            theirs = [best[k] for k in keys if ROWS[k][1] != "dschat"]
            if ours and theirs:
                d = max(r["decode"] for r in ours) / max(r["decode"] for r in theirs)
                e = max(r["e2e"] for r in ours) / max(r["e2e"] for r in theirs)
                print(f"  speed-up, best dschat row / best HF row (> 1: dschat is faster): decode {d:.2f}x, "
                      f"end-to-end {e:.2f}x", flush=True)
    print("rows differing: batch row@first differing position, ~ = a near-tie there (HF's logit for the other "
          "pick within 2 bf16 ulps of HF's best)")


def scaling(args, runner, step, tokenizer, config, bandwidth, tmp, dtypes):
    keys = ["dschat", "hf-static", "hf-dynamic"]
    print(f"scaling: decode tokens/s (share of the bound), {args.new} new tokens, {args.iterations} iteration(s), "
          f"{args.rounds} round(s), glibc; agree = dschat tokens equal to HF dynamic's")
    print(f"{'dtype':5} {'prompt':>6} {'batch':>5} | {'bound':>8} | {'dschat':>16} | {'HF static':>16} | "
          f"{'HF dynamic':>16} | {'dschat/best HF':>14} | {'agree':>6}")
    for dtype in dtypes:
        for length in (int(p) for p in args.prompts.split(",")):
            for batch in (int(b) for b in args.batches.split(",")):
                prompt_file, ids, _ = make_prompts(tokenizer, config, batch, length, tmp)
                bound = step.bound(batch, ids.shape[1] + args.new / 2, dtype, bandwidth)
                best = {}
                for _ in range(args.rounds):
                    for key in keys:
                        r = runner.run(key, prompt_file, args.new, dtype, args.iterations)
                        if key in best:
                            r["min_ms"] = min(r["min_ms"], best[key]["min_ms"])
                            r["prefill_ms"] = min(r["prefill_ms"], best[key]["prefill_ms"])
                        best[key] = r
                decode = {k: rates(best[k], batch, args.new)[0] for k in keys}
                share = agreement(best["dschat"]["tokens"], best["hf-dynamic"])[0]
                cells = " | ".join(f"{decode[k]:8.1f} ({decode[k] / bound:5.1%})" for k in keys)
                print(f"{dtype:5} {length:6d} {batch:5d} | {bound:8.0f} | {cells} | "
                      f"{decode['dschat'] / max(decode['hf-static'], decode['hf-dynamic']):13.2f}x | {share:6.1%}",
                      flush=True)


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF folder to benchmark (default: random OPT-125m shape)")
    parser.add_argument("--build", default=os.path.join(root, "build"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batches", help="default 8,32 (--quick: 2,8; --scaling: 1,8,32)")
    parser.add_argument("--prompt", type=int, help="longest prompt (default 256, --quick 32)")
    parser.add_argument("--prompts", default="64,256,1024", help="--scaling's prompt lengths")
    parser.add_argument("--new", type=int, help="new tokens (default 256, --quick and --scaling 32)")
    parser.add_argument("--dtypes", help="default f32,bf16 (--scaling: bf16)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"some of {','.join(ROWS)} ({REFERENCE} always runs)")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--rounds", type=int, help="default 2 (--quick, --scaling: 1)")
    parser.add_argument("--quick", action="store_true", help="batches 2,8, prompt 32, 32 new tokens, 1 round")
    parser.add_argument("--scaling", action="store_true", help="batch 1/8/32 x prompt 64/256/1024 decode table")
    parser.add_argument("--verbose", action="store_true", help="print every subprocess command, not only the first")
    # The HF worker (a subprocess of this script; see the docstring).
    parser.add_argument("--hf-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prompt-file", help=argparse.SUPPRESS)
    parser.add_argument("--cache", choices=("dynamic", "static"), help=argparse.SUPPRESS)
    parser.add_argument("--scores", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_worker:
        args.dtype = args.dtypes
        return hf_worker(args)

    small = args.quick or args.scaling
    args.batches = args.batches or ("2,8" if args.quick else "1,8,32" if args.scaling else "8,32")
    args.prompt = args.prompt or (32 if args.quick else 256)
    args.new = args.new or (32 if small else 256)
    args.rounds = args.rounds or (1 if small else 2)
    dtypes = (args.dtypes or ("bf16" if args.scaling else "f32,bf16")).split(",")
    keys = [k for k in args.rows.split(",") if k]
    for k in keys:
        if k not in ROWS:
            sys.exit(f"--rows: unknown row {k!r}; rows are {','.join(ROWS)}")
    if REFERENCE not in keys:
        keys.insert(0, REFERENCE)
    jemalloc = machine.jemalloc_path()
    if jemalloc is None:
        keys = [k for k in keys if "LD_PRELOAD" not in ROWS[k][2]]

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, config, tokenizer, description = prepare_model(args, tmp)
        model_type = config.get("model_type")
        driver = os.path.join(args.build, "bin", "bench_generate")
        plugins = os.path.join(args.build, "lib", "dschat", "plugins")
        for path in (driver, os.path.join(plugins, f"libdschat-{model_type}.so"),
                     os.path.join(plugins, "libdschat-kv-cache.so")):
            if not os.path.exists(path):
                sys.exit(f"{path} is missing: build bench_generate, dschat_plugin_{model_type} and "
                         "dschat_plugin_kv-cache first")
        step = StepBytes(model_dir, config)
        bandwidth = machine.read_bandwidth_gbs(args.threads)
        print_header(args, description, config, step, tokenizer, bandwidth, jemalloc, dtypes)
        runner = Runner(args, model_dir, jemalloc)
        if args.scaling:
            scaling(args, runner, step, tokenizer, config, bandwidth, tmp, dtypes)
        else:
            main_rows(args, runner, step, tokenizer, config, bandwidth, tmp, dtypes, keys)


if __name__ == "__main__":
    main()
