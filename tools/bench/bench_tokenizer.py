#!/usr/bin/env python3
"""Tokenizer encode speed, dschat vs HF tokenizers, measured in the same run on the same lines.

Both sides encode one line at a time on one thread (add_special_tokens=True), `passes` times over the corpus;
HF's word cache and dschat's are warm after the first pass on both sides. Also reported: HF encode_batch with
one Rayon thread (no per-call Python overhead), as a second baseline. Token totals must agree.

  .venv/bin/python tools/bench/bench_tokenizer.py --bin build/bin/bench_tokenizer [--passes 5]
"""
import argparse
import json
import os
import subprocess
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"  # before importing tokenizers: single-threaded encode_batch
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "tests", "data", "tokenizers")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "bin", "bench_tokenizer"))
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--tokenizers", default="bytelevel,sentencepiece,llama3_split")
    args = ap.parse_args()
    corpus = os.path.join(DATA, "corpus.jsonl")
    with open(corpus, encoding="utf-8") as f:
        lines = [json.loads(l) for l in f]
    print(f"{len(lines)} lines x {args.passes} passes, one thread, per-line encode with special tokens")
    print(f"{'tokenizer':<16}{'dschat lines/s':>16}{'HF lines/s':>14}{'ratio':>8}{'HF batch/s':>14}{'ratio':>8}")
    for name in args.tokenizers.split(","):
        path = os.path.join(DATA, name, "tokenizer.json")
        tok = Tokenizer.from_file(path)
        t0 = time.perf_counter()
        for _ in range(args.passes):
            hf_tokens = sum(len(tok.encode(l).ids) for l in lines)
        hf_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.passes):
            batch_tokens = sum(len(e.ids) for e in tok.encode_batch(lines))
        batch_s = time.perf_counter() - t0
        out = subprocess.run([args.bin, path, corpus, str(args.passes)], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout)
        if r["tokens"] != hf_tokens or batch_tokens != hf_tokens:
            sys.exit(f"{name}: token totals differ: dschat {r['tokens']}, HF {hf_tokens}, HF batch {batch_tokens}")
        n = len(lines) * args.passes
        ds, hf, hb = n / r["seconds"], n / hf_s, n / batch_s
        print(f"{name:<16}{ds:>16,.0f}{hf:>14,.0f}{ds / hf:>8.2f}{hb:>14,.0f}{ds / hb:>8.2f}")


if __name__ == "__main__":
    main()
