#!/usr/bin/env python3
"""SFT training throughput of dschat's engine (build/bin/bench_sft) vs a transformers + PyTorch loop, same run.

What one step is, on both sides: forward, causal-LM loss (fp32 logits), backward, clip the grad norm to 1.0,
AdamW (betas 0.9/0.95, eps 1e-8, lr 1e-5) in DeepSpeed-Chat's decay / no-decay groups, cosine schedule, zero
grads. No dropout. bf16 means bf16 weights trained through fp32 master weights (what dschat's engine and
DeepSpeed's bf16 optimizer do): the Python loop copies gradients to fp32 masters, steps them and copies back.

The baseline at its strongest:
  - torch.optim.AdamW(fused=True) (the kernel class dschat's engine uses); --python-unfused gives torch's CPU
    default (fused=False, foreach=False), what an ordinary training script gets;
  - transformers' SDPA attention, and an all-ones attention mask, so transformers takes SDPA's is_causal path;
  - an extra row with jemalloc preloaded (LD_PRELOAD), next to glibc malloc, when libjemalloc2 is installed.

Shapes are DeepSpeed-Chat's: its SFT dataset pads every row to max_seq_len (tokenizer(..., padding="max_length",
max_length=max_seq_len)), so a step always computes batch x max_seq_len positions whatever the texts are. Here
every row is exactly --max-seq-len random tokens (ids 3..vocab-1) and bench_sft's TOKENS argument is
--max-seq-len for both sides: the same shapes, the same work.

The same start on both sides: the model (--model-shape) is built once with transformers (torch.manual_seed(0))
and written with save_pretrained in fp32; bench_sft loads that folder (converting to the row's dtype) and the
Python loop loads it with from_pretrained(dtype=...). The batch is the same too (bench_sft draws it with
at::randint after at::manual_seed(0); Python with torch.randint and a generator seeded 0). So the loss curves of
the two sides are comparable step by step: the max relative difference per dtype is printed (fp32: summation
order only; bf16: rounding after every op as well). A bench_sft built before it could load a folder reports
"weights": "random" (or nothing) and the comparison says so.

Each row runs as its own child process (`os.wait4` on it gives the child's own peak RSS, ru_maxrss), the rows
alternate for --rounds rounds (a busy machine slows all alike), and each row keeps its best median step time
over --steps steps after one warm-up step (allocator, Adam state creation). Rows per dtype:
  dschat                  bench_sft with dschat's caching CPU allocator (installed as `dschat run` does)
  dschat system-alloc     the same with DSCHAT_CPU_ALLOCATOR=system: LibTorch's own allocator (the cache's gain)
  python                  the transformers + torch loop, glibc malloc
  python jemalloc         the same with LD_PRELOAD=libjemalloc.so.2 (only when installed)

Columns: tokens/s (batch x max_seq_len / median step), the median step and the mean forward (with the loss),
backward and optimizer (clip, AdamW, schedule, zero grad; master copies in bf16) times, the bf16/fp32 speed ratio of each row, TFLOP/s = (6 x
trainable params x tokens + 12 x layers x hidden x max_seq_len x tokens) / step time (the PaLM convention:
attention counted in full, though causal kernels may skip the upper triangle) and its share of the GEMM peak
of that dtype, measured at the top by machine.gemm_peak_gflops (a large square at::mm; for fp32 the faster of
MKL's and oneDNN's, which dschat uses on AMD CPUs with AVX-512: onednn_linear.h). On CPUs without AVX-512
LibTorch's bf16 GEMM is a generic loop and dschat runs bf16 linears as fp32 GEMMs on upcast operands, so a bf16
share over 100 % is possible there; the fp32 peak is the bound to read it against (printed too). Peak RSS
includes each side's runtime: LibTorch's libraries for bench_sft (~0.65 GB with the CUDA-built wheel's
libtorch_cpu.so), Python + torch + transformers for the loop (~0.8 GB), measured with a tiny model.

Usage (after `ninja -C build bench_sft dschat_plugin_opt dschat_plugin_llama`):
  .venv/bin/python tools/bench/bench_sft_train.py [--build build] [--model-shape opt-125m|smollm2-135m|tiny-opt|
      tiny-llama] [--threads N] [--steps 3] [--rounds 2] [--batch 2] [--max-seq-len 512] [--dtypes f32,bf16]
      [--rows dschat,dschat-system,python,python-jemalloc] [--python-unfused]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import machine  # noqa: E402

NO_DECAY = ["bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight"]

# family, plugin, transformers config. smollm2-135m is SmolLM2-135M's shape (HuggingFaceTB/SmolLM2-135M
# config.json); the tiny ones are for smoke runs.
SHAPES = {
    "opt-125m": ("opt", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
                             vocab_size=50272, max_position_embeddings=2048)),
    "smollm2-135m": ("llama", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                                   tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
                                   max_position_embeddings=8192, hidden_act="silu")),
    "tiny-opt": ("opt", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, ffn_dim=512,
                             vocab_size=640, max_position_embeddings=2048)),
    "tiny-llama": ("llama", dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=256, vocab_size=640,
                                 tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
                                 max_position_embeddings=2048, hidden_act="silu")),
}
ROWS = ("dschat", "dschat-system", "python", "python-jemalloc")


def hf_config(shape):
    family, fields = SHAPES[shape]
    if family == "opt":
        from transformers import OPTConfig
        return OPTConfig(**fields, word_embed_proj_dim=fields["hidden_size"], dropout=0.0, attention_dropout=0.0,
                         activation_dropout=0.0, layerdrop=0.0, attn_implementation="sdpa")
    from transformers import LlamaConfig
    return LlamaConfig(**fields, attention_dropout=0.0, attention_bias=False, mlp_bias=False,
                       attn_implementation="sdpa")


def quiet_transformers():
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def write_model(shape, path):
    """The folder both sides start from: fp32 weights from transformers' own init under torch.manual_seed(0)."""
    from transformers import AutoModelForCausalLM
    quiet_transformers()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config(shape))
    model.save_pretrained(path)
    config = model.config
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)  # tied weights counted once
    del model
    return config, params


# ---------------------------------------------------------------------------------------------------------------
# The Python side, run as a child process of this script.

class PythonLoop:
    """The step DeepSpeed-Chat runs on one process, written as plain transformers + torch.optim."""

    def __init__(self, model_dir, dtype, steps, fused):
        from transformers import AutoModelForCausalLM
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa").train()
        self.params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.mixed = dtype != torch.float32
        self.masters = [p.detach().float().clone() if self.mixed else p for _, p in self.params]
        decay = [m for (n, _), m in zip(self.params, self.masters) if not any(k in n.lower() for k in NO_DECAY)]
        no_decay = [m for (n, _), m in zip(self.params, self.masters) if any(k in n.lower() for k in NO_DECAY)]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=1e-5, betas=(0.9, 0.95), eps=1e-8, fused=True if fused else None)
        total = steps + 1
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: max(0.0, 0.5 * (1.0 + math.cos(math.pi * s / max(1, total)))))

    def step(self, ids, mask):
        """(loss, forward_ms, backward_ms): forward includes the loss, as bench_sft's forward_ms does."""
        start = time.perf_counter()
        logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                                 ids[:, 1:].reshape(-1))
        value = loss.item()
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
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
        return value, (forward - start) * 1e3, (backward - forward) * 1e3


def python_child(args):
    torch.set_num_threads(args.threads)
    quiet_transformers()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    loop = PythonLoop(args.model_dir, dtype, args.steps, fused=not args.python_unfused)
    vocab = loop.model.config.vocab_size
    ids = torch.randint(3, vocab, (args.batch, args.max_seq_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    times, losses, forward_ms, backward_ms, optimizer_ms = [], [], 0.0, 0.0, 0.0
    for i in range(args.steps + 1):  # the first step warms up and creates the Adam state
        start = time.perf_counter()
        loss, f, b = loop.step(ids, mask)
        total = (time.perf_counter() - start) * 1e3
        losses.append(loss)
        if i > 0:
            times.append(total)
            forward_ms += f / args.steps
            backward_ms += b / args.steps
            optimizer_ms += (total - f - b) / args.steps
    times.sort()
    print(json.dumps({"dtype": args.dtype, "median_ms": times[len(times) // 2], "min_ms": times[0],
                      "losses": losses, "weights": "loaded", "forward_ms": forward_ms, "backward_ms": backward_ms,
                      "optimizer_ms": optimizer_ms}), flush=True)


# ---------------------------------------------------------------------------------------------------------------

def run_child(cmd, env):
    """Runs cmd; (returncode, stdout, stderr, peak RSS of that child alone in MB)."""
    rc, out, err, _, rss = machine.run_child(cmd, env)
    return rc, out, err, rss


def row_command(row, args, dtype, model_dir, driver, plugin):
    env = dict(os.environ)
    env.pop("DSCHAT_CPU_ALLOCATOR", None)
    env.pop("LD_PRELOAD", None)
    if row.startswith("dschat"):
        if row == "dschat-system":
            env["DSCHAT_CPU_ALLOCATOR"] = "system"
        return [driver, plugin, model_dir, str(args.batch), str(args.max_seq_len), dtype, str(args.steps),
                str(args.threads)], env
    if row == "python-jemalloc":
        env["LD_PRELOAD"] = machine.jemalloc_path()
    cmd = [sys.executable, os.path.abspath(__file__), "--child-python", "--model-dir", model_dir, "--dtype", dtype,
           "--batch", str(args.batch), "--max-seq-len", str(args.max_seq_len), "--steps", str(args.steps),
           "--threads", str(args.threads)]
    return cmd + (["--python-unfused"] if args.python_unfused else []), env


LABELS = {"dschat": "dschat", "dschat-system": "dschat system-alloc", "python": "python",
          "python-jemalloc": "python jemalloc"}


def main():
    root = os.path.dirname(os.path.dirname(HERE))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default=os.path.join(root, "build"))
    parser.add_argument("--model-shape", choices=list(SHAPES), default="opt-125m")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row and round (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max-seq-len", "--tokens", dest="max_seq_len", type=int, default=512,
                        help="every row's length (DeepSpeed-Chat pads to max_seq_len; its default is 512)")
    parser.add_argument("--dtypes", default="f32,bf16")
    parser.add_argument("--rows", default=",".join(ROWS), help="a subset of " + ",".join(ROWS))
    parser.add_argument("--python-unfused", action="store_true",
                        help="torch.optim.AdamW with torch's CPU defaults (fused=False, foreach=False) instead "
                             "of fused=True")
    # the child mode: one Python row
    parser.add_argument("--child-python", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_python:
        return python_child(args)

    rows = [r for r in args.rows.split(",") if r]
    for r in rows:
        if r not in ROWS:
            sys.exit(f"--rows: unknown row {r!r} (known: {', '.join(ROWS)})")
    if "python-jemalloc" in rows and not machine.jemalloc_path():
        print("python jemalloc rows skipped: libjemalloc.so.2 is not installed (apt-get install libjemalloc2)")
        rows.remove("python-jemalloc")
    family, fields = SHAPES[args.model_shape]
    driver = os.path.join(args.build, "bin", "bench_sft")
    plugin = os.path.join(args.build, "lib", "dschat", "plugins", f"libdschat-{family}.so")
    if any(r.startswith("dschat") for r in rows):
        for path in (driver, plugin):
            if not os.path.exists(path):
                sys.exit(f"{path} is missing: build the bench_sft and dschat_plugin_{family} targets first")
    dtypes = args.dtypes.split(",")

    for line in machine.describe(args.threads):
        print(line)
    peaks = {}
    for name, dt in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        peaks[name] = machine.gemm_peak_gflops(dt, args.threads)
    # fp32: the faster of MKL (torch.mm) and oneDNN, the bound of what this CPU reaches (dschat runs oneDNN where
    # it is the faster one: AMD with AVX-512).
    mkl_f32 = peaks["f32"]
    peaks["f32"] = max(mkl_f32, machine.gemm_peak_gflops(torch.float32, args.threads, backend="onednn"))
    print(f"GEMM peak (2048^3, {args.threads} threads): fp32 {peaks['f32']:.1f} GFLOP/s (torch.mm / MKL "
          f"{mkl_f32:.1f}; dschat's fp32 linears: {machine.dschat_fp32_gemm()}), bf16 {peaks['bf16']:.1f} GFLOP/s "
          "(at::mm, oneDNN where the CPU has AVX-512)", flush=True)

    tokens = args.batch * args.max_seq_len
    with tempfile.TemporaryDirectory(prefix="bench_sft_train_") as tmp:
        model_dir = os.path.join(tmp, "model")
        config, params = write_model(args.model_shape, model_dir)
        layers, hidden = config.num_hidden_layers, config.hidden_size
        flops = 6 * params * tokens + 12 * layers * hidden * args.max_seq_len * tokens
        desc = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("max_position_embeddings", "hidden_act"))
        print(f"SFT train step, {args.model_shape} ({family}: {desc}; {params / 1e6:.1f}M trainable parameters), "
              f"random weights (transformers' init, seed 0) loaded by both sides; batch {args.batch} x max_seq_len "
              f"{args.max_seq_len} = {tokens} tokens a step; {flops / 1e12:.3f} TFLOP a step; python AdamW "
              f"{'default (fused=False)' if args.python_unfused else 'fused=True'}; best of {args.rounds} "
              f"round(s) x median of {args.steps} steps after 1 warm-up", flush=True)

        results = {}  # (row, dtype) -> dict with median_ms, losses, rss_mb, ...
        for dtype in dtypes:
            for _ in range(args.rounds):
                for row in rows:
                    if results.get((row, dtype), {}).get("failed"):
                        continue
                    cmd, env = row_command(row, args, dtype, model_dir, driver, plugin)
                    rc, out, err, rss = run_child(cmd, env)
                    if rc != 0:
                        print(f"{LABELS[row]} {dtype} failed (exit {rc}):\n{(out + err)[-2000:]}", flush=True)
                        results[(row, dtype)] = {"failed": True}
                        continue
                    got = json.loads(out.strip().splitlines()[-1])
                    got["rss_mb"] = rss
                    have = results.get((row, dtype))
                    if have is None:
                        results[(row, dtype)] = got
                    else:  # keep the best median; the losses and the RSS of the first / largest
                        if got["median_ms"] < have["median_ms"]:
                            for key in ("median_ms", "min_ms", "forward_ms", "backward_ms", "optimizer_ms"):
                                have[key] = got[key]
                        have["rss_mb"] = max(have["rss_mb"], rss)

        def ok(row, dtype):
            r = results.get((row, dtype))
            return r if r and not r.get("failed") else None

        print()
        print(f"{'row':20} {'dtype':5} {'tok/s':>9} {'step ms':>9} {'fwd ms':>8} {'bwd ms':>8} {'opt ms':>7} "
              f"{'bf16/f32':>8} {'TFLOP/s':>8} {'% peak':>7} {'peak RSS MB':>11}")
        for row in rows:
            for dtype in dtypes:
                r = ok(row, dtype)
                if not r:
                    print(f"{LABELS[row]:20} {dtype:5} {'failed':>9}")
                    continue
                tps = tokens / (r["median_ms"] / 1e3)
                tflops = flops / (r["median_ms"] / 1e3) / 1e12
                share = 100 * tflops * 1e3 / peaks[dtype]
                f32 = ok(row, "f32")
                speed = f"{f32['median_ms'] / r['median_ms']:8.2f}" if dtype == "bf16" and f32 else f"{'':8}"
                print(f"{LABELS[row]:20} {dtype:5} {tps:9.1f} {r['median_ms']:9.1f} {r['forward_ms']:8.1f} "
                      f"{r['backward_ms']:8.1f} {r['optimizer_ms']:7.1f} {speed} {tflops:8.3f} {share:6.1f}% "
                      f"{r['rss_mb']:11.0f}")
        if "bf16" in dtypes and peaks["bf16"] < peaks["f32"]:
            print(f"(bf16 GEMM peak {peaks['bf16']:.1f} < fp32 {peaks['f32']:.1f} GFLOP/s: LibTorch's bf16 GEMM is "
                  f"its generic loop here; against the fp32 peak the bf16 rows reach "
                  + ", ".join(f"{LABELS[row]} {100 * flops / (ok(row, 'bf16')['median_ms'] / 1e3) / 1e9 / peaks['f32']:.1f}%"
                              for row in rows if ok(row, "bf16")) + ")")

        print()
        for dtype in dtypes:
            d, s, p, j = (ok(r, dtype) for r in ROWS)
            parts = []
            if d and p:
                parts.append(f"dschat / python {p['median_ms'] / d['median_ms']:.2f}x")
            if d and j:
                parts.append(f"dschat / python jemalloc {j['median_ms'] / d['median_ms']:.2f}x")
            if d and s:
                parts.append(f"caching allocator vs system {s['median_ms'] / d['median_ms']:.2f}x")
            if p and j:
                parts.append(f"jemalloc vs glibc (python) {p['median_ms'] / j['median_ms']:.2f}x")
            if parts:
                print(f"{dtype} speed-ups (> 1: the first is faster): " + "; ".join(parts))
        print()
        for dtype in dtypes:
            d, p = ok("dschat", dtype), ok("python", dtype)
            if not (d and p):
                continue
            if d.get("weights") != "loaded":
                print(f"{dtype} losses not comparable: this bench_sft build does not load the model folder "
                      f"(weights: {d.get('weights', 'random, old driver')}); rebuild bench_sft")
                continue
            rel = max(abs(a - b) / abs(b) for a, b in zip(d["losses"], p["losses"]))
            print(f"{dtype} loss curves ({len(d['losses'])} steps, same weights and batch): max relative "
                  f"difference {rel:.2e}")
            print(f"  dschat: {' '.join(f'{x:.6f}' for x in d['losses'])}")
            print(f"  python: {' '.join(f'{x:.6f}' for x in p['losses'])}")


if __name__ == "__main__":
    main()
