#!/usr/bin/env python3
"""Writes the GRPO quickstart's data (configs/grpo-quickstart/arith.jsonl): one-digit additions with one right
answer, a verifiable task for a rule reward.

The SFT answers come from a sloppy annotator: SLIP_SHARE of them are one too high ("3 plus 4 is 8."), so the
fine-tuned model's greedy answers are mostly wrong while its samples are sometimes right; GRPO against the
`exact-answer` reward on the row's `answer` field then has a signal to learn from, and the held-out accuracy of
greedy answers (eval/reward) shows whether it did. The phrasings are the quickstart's, so its tokenizer and tiny
OPT (configs/quickstart/model) serve unchanged.

Rows use DeepSpeed-Chat's rm-static schema (prompt, response, chosen, rejected) plus `answer`: `response` is the
sloppy SFT target, `chosen` the right answer, `rejected` the slip, so the same file also feeds reward-model or DPO
training. Standard library only, seeded.

Usage: python3 tools/make_grpo_quickstart_data.py [--out configs/grpo-quickstart/arith.jsonl] [--rows 2000]
"""
import argparse
import json
import random

SLIP_SHARE = 0.7


def row(rng):
    a, b = rng.randrange(10), rng.randrange(10)
    q = rng.choice([f"Add {a} and {b}.", f"What is {a} plus {b}?", f"Please add {a} and {b}."])
    template = rng.choice(["{a} plus {b} is {s}.", "The answer is {s}."])
    right = " " + template.format(a=a, b=b, s=a + b)
    slip = " " + template.format(a=a, b=b, s=a + b + 1)
    return {"prompt": f" Human: {q} Assistant:", "response": slip if rng.random() < SLIP_SHARE else right,
            "chosen": right, "rejected": slip, "answer": str(a + b)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="configs/grpo-quickstart/arith.jsonl")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with open(args.out, "w") as f:
        for _ in range(args.rows):
            f.write(json.dumps(row(rng)) + "\n")


if __name__ == "__main__":
    main()
