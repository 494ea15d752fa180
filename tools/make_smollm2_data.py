#!/usr/bin/env python3
"""Writes configs/smollm2/data/concise.jsonl: the preference data of configs/smollm2.toml.

The preference is conciseness, a property a 135M chat model shows only some of the time, so each step has work:
  - prompts: 600 everyday questions built from topic lists below (facts, how-to, definitions, advice, small sums);
  - chosen:   SmolLM2-135M-Instruct's own greedy answer when told "Answer in one short sentence.";
  - rejected: its greedy answer when told to answer at length, cut after its third sentence;
  - response: what SFT learns, the chosen answer for 60 % of the rows and the rejected one for the rest (seeded),
              so the SFT model answers both ways and PPO has a preference to move it along; a rejected answer
              that loops (under half its words distinct, 19 of 451) stays a rejected answer but is never learned.
Rows use the rm-static schema; prompts carry DeepSpeed-Chat's " Human: ... Assistant:" format, answers a leading
space. Both answers come from the model itself, so they are fluent text in its own voice; only their length and
focus differ. Deterministic: greedy decoding, fixed seed; rerun with tools/fetch_smollm2.sh's folder:

  .venv/bin/python tools/make_smollm2_data.py [--model .cache/models/SmolLM2-135M-Instruct]
"""
import argparse
import itertools
import json
import os
import random
import re
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

COUNTRIES = ["France", "Germany", "Italy", "Spain", "Japan", "China", "India", "Brazil", "Canada", "Mexico",
             "Egypt", "Kenya", "Australia", "Russia", "Norway", "Sweden", "Greece", "Turkey", "Peru", "Chile",
             "Argentina", "Portugal", "Poland", "Ireland", "Thailand", "Vietnam", "Nigeria", "Morocco", "Austria",
             "Finland"]
ACTIVITIES = ["sleeping better", "studying for an exam", "saving money", "learning to cook", "running a first 5k",
              "keeping a plant alive", "writing a cover letter", "staying focused at work", "learning a language",
              "making new friends", "packing for a trip", "drinking more water", "waking up early",
              "cleaning a kitchen", "starting to meditate", "reading more books", "taking better photos",
              "public speaking", "remembering names", "keeping a journal"]
THINGS = ["a rainbow", "photosynthesis", "gravity", "a volcano", "the moon", "a computer", "the internet",
          "an earthquake", "a vaccine", "electricity", "a battery", "the heart", "a cloud", "the ocean tides",
          "a black hole", "an airplane wing", "a bicycle", "a thermometer", "a compass", "the seasons"]
JOBS = ["teacher", "doctor", "farmer", "pilot", "chef", "nurse", "architect", "plumber", "librarian", "firefighter",
        "journalist", "dentist", "gardener", "lawyer", "scientist", "electrician", "baker", "programmer",
        "musician", "mechanic"]
ANIMALS = ["cats", "dogs", "bees", "owls", "dolphins", "elephants", "penguins", "horses", "ants", "whales",
           "frogs", "eagles", "bats", "camels", "parrots"]
WORDS = ["happy", "ancient", "brave", "curious", "generous", "fragile", "humble", "vivid", "stubborn", "calm"]


def prompts():
    out = [f"What is the capital of {c}?" for c in COUNTRIES]
    out += [f"What language is spoken in {c}?" for c in COUNTRIES]
    out += [f"Give me a tip for {a}." for a in ACTIVITIES]
    out += [f"What is the best way to get started with {a}?" for a in ACTIVITIES]
    out += [f"How does {t} work?" for t in THINGS]
    out += [f"Explain {t} to a child." for t in THINGS]
    out += [f"What does a {j} do?" for j in JOBS]
    out += [f"What skills does a {j} need?" for j in JOBS]
    out += [f"Why are {a} interesting?" for a in ANIMALS]
    out += [f"Where do {a} live?" for a in ANIMALS]
    out += [f"What do {a} eat?" for a in ANIMALS]
    out += [f"What does the word '{w}' mean?" for w in WORDS]
    out += [f"Use the word '{w}' in a sentence." for w in WORDS]
    rng = random.Random(7)
    sums = sorted({(rng.randint(2, 60), rng.randint(2, 60)) for _ in range(200)})[:100]
    out += [f"What is {a} plus {b}?" for a, b in sums]
    out += [f"Name a country that borders {c}." for c in COUNTRIES]
    out += [f"What is a famous food from {c}?" for c in COUNTRIES]
    out += [f"Suggest a name for a pet {a[:-1]}." for a in ANIMALS]
    out += [f"What is one fun fact about {c}?" for c in COUNTRIES]
    out += [f"Why is {t} important?" for t in THINGS]
    return list(dict.fromkeys(out))


def loops(text):
    words = text.split()
    return len(set(words)) < 0.5 * max(1, len(words))


def first_sentences(text, n):
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(parts[:n]).strip()


def answer_all(model, tokenizer, questions, system, max_new_tokens, batch=24):
    answers = []
    tokenizer.padding_side = "left"
    for start in range(0, len(questions), batch):
        chunk = questions[start:start + batch]
        texts = [tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": q}],
                                               tokenize=False, add_generation_prompt=True) for q in chunk]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        for row in out[:, enc["input_ids"].shape[1]:]:
            answers.append(" ".join(tokenizer.decode(row, skip_special_tokens=True).split()))
        print(f"[make_smollm2_data] {system[:24]!r}: {len(answers)}/{len(questions)}", flush=True)
    return answers


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=os.path.join(root, ".cache/models/SmolLM2-135M-Instruct"))
    parser.add_argument("--out", default=os.path.join(root, "configs/smollm2/data/concise.jsonl"))
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    questions = prompts()
    start = time.time()
    concise = answer_all(model, tokenizer, questions, "Answer in one short sentence.", 40)
    verbose = answer_all(model, tokenizer, questions, "Answer at length, in detail, with several sentences.", 96)
    rng = random.Random(1234)
    rows = []
    for q, c, v in zip(questions, concise, verbose):
        c = first_sentences(c, 1)
        v = first_sentences(v, 3)
        if not c or not v or c == v:
            continue
        learn_chosen = rng.random() < 0.6 or loops(v)
        rows.append({"prompt": f" Human: {q} Assistant:", "response": " " + (c if learn_chosen else v),
                     "chosen": " " + c, "rejected": " " + v})
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, args.out)
    print(f"[make_smollm2_data] wrote {len(rows)} rows to {args.out} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
