#!/usr/bin/env python3
"""Writes the quickstart's data, tokenizer and tiny OPT config (DESIGN.md section 7b).

Data (standard library only, seeded): short requests of a few kinds, each with one good answer (on topic,
complete, ends cleanly) and bad ones (off topic, repetitive, cut off, rude), in DeepSpeed-Chat's rm-static
schema: prompt " Human: q Assistant:", chosen = " good", rejected = " bad", response = a good answer in
GOOD_SHARE of rows and a bad one otherwise, so that SFT learns to produce both and PPO has something to fix.
Every bad kind differs from the good answer in visible tokens, so a tiny reward model can learn the preference.

Tokenizer (the venv's `tokenizers`): a byte-level BPE trained on the data, with <|endoftext|> as bos, eos and pad
(OPT under DeepSpeed-Chat has bos == eos == pad) and a BOS prepended as OPT's tokenizer does.

Usage: .venv/bin/python tools/make_quickstart_data.py [--out configs/quickstart] [--rows 3000] [--seed 1234]
"""
import argparse
import json
import os
import random

GOOD_SHARE = 0.6
EOT = "<|endoftext|>"

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown"]
OPPOSITES = {"hot": "cold", "cold": "hot", "big": "small", "small": "big", "up": "down", "down": "up",
             "fast": "slow", "slow": "fast", "day": "night", "night": "day", "open": "closed", "happy": "sad"}
WORDS = ["cat", "dog", "sun", "red", "book", "tree", "fish", "milk", "hat", "car"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
NAMES = ["Ann", "Bob", "Sam", "Eve", "Tom", "Mia"]

OFF_TOPIC = ["I had soup for lunch today.", "The train leaves at noon.", "My shoes are too small.",
             "Penguins live near the south pole.", "The library closes early on Sunday.",
             "I think it will rain tomorrow.", "Bananas are a good snack."]
RUDE = ["No. Ask someone else.", "That is a stupid question.", "I do not care, go away.",
        "Figure it out yourself.", "Stop bothering me.", "Why would I tell you that?"]


def request(rng):
    """One request: (question, good answer)."""
    kind = rng.randrange(6)
    if kind == 0:
        q = rng.choice(["Name a color.", "Can you name a color?", "Tell me a color.", "Please name one color."])
        c = rng.choice(COLORS)
        return q, rng.choice([f"Sure! {c.capitalize()} is a color.", f"{c.capitalize()}.", f"One color is {c}."])
    if kind == 1:
        a, b = rng.randrange(10), rng.randrange(10)
        q = rng.choice([f"Add {a} and {b}.", f"What is {a} plus {b}?", f"Please add {a} and {b}."])
        return q, rng.choice([f"{a} plus {b} is {a + b}.", f"The answer is {a + b}."])
    if kind == 2:
        name = rng.choice(NAMES)
        q = rng.choice(["Greet me.", "Say hello to me.", f"Greet me, I am {name}.", "Please say hi."])
        who = f", {name}" if name in q else ""
        return q, rng.choice([f"Hello{who}! Nice to meet you.", f"Hi{who}! How are you today?",
                              f"Good day{who}! It is nice to see you."])
    if kind == 3:
        w = rng.choice(sorted(OPPOSITES))
        q = rng.choice([f"What is the opposite of {w}?", f"Tell me the opposite of {w}.",
                        f"Give the opposite of {w}."])
        return q, rng.choice([f"The opposite of {w} is {OPPOSITES[w]}.", f"{OPPOSITES[w].capitalize()}."])
    if kind == 4:
        w = rng.choice(WORDS)
        q = rng.choice([f"Spell {w}.", f"How do you spell {w}?", f"Please spell the word {w}."])
        return q, rng.choice([f"{w} is spelled {'-'.join(w)}.", f"{'-'.join(w.upper())}."])
    n = rng.randrange(2, 7)
    q = rng.choice([f"Count to {n}.", f"Please count to {n}.", f"Can you count to {n}?"])
    return q, rng.choice([", ".join(str(i) for i in range(1, n + 1)) + ".",
                          " ".join(NUMBERS[:n]).capitalize() + "."])


def bad_answer(rng, good):
    """A bad answer of a random kind; each differs from the good one in visible tokens."""
    kind = rng.randrange(4)
    words = good.rstrip(".!?").split()
    if kind == 0:
        return rng.choice(OFF_TOPIC)
    if kind == 1:  # repetitive, never ends
        w = rng.choice(words).strip(",.!?").lower() or "the"
        return " ".join([w] * rng.randrange(5, 10))
    if kind == 2 and len(words) > 1:  # cut off mid-sentence, no final punctuation
        return " ".join(words[: rng.randrange(1, len(words))]).rstrip(",")
    return rng.choice(RUDE)


def make_rows(rows, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        q, good = request(rng)
        bad = bad_answer(rng, good)
        response = good if rng.random() < GOOD_SHARE else bad_answer(rng, good)
        out.append({"prompt": f" Human: {q} Assistant:", "response": f" {response}", "chosen": f" {good}",
                    "rejected": f" {bad}"})
    return out


def write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_tokenizer_and_config(model_dir, rows, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = [r["prompt"] + r[k] for r in rows for k in ("chosen", "rejected", "response")]
    tok.train_from_iterator(texts, trainer)
    eot = tok.token_to_id(EOT)
    # OPT prepends its BOS to every sequence; here BOS is the same <|endoftext|> token.
    tok.post_processor = processors.TemplateProcessing(single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B",
                                                       special_tokens=[(EOT, eot)])
    os.makedirs(model_dir, exist_ok=True)
    tok.save(os.path.join(model_dir, "tokenizer.json"))
    token_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT,
                    "pad_token": EOT, "unk_token": EOT, "model_max_length": 256, "padding_side": "right",
                    "clean_up_tokenization_spaces": False}
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
        json.dump(token_config, f, indent=2)
        f.write("\n")
    hidden = 128
    config = {
        "model_type": "opt", "architectures": ["OPTForCausalLM"], "vocab_size": tok.get_vocab_size(),
        "hidden_size": hidden, "word_embed_proj_dim": hidden, "num_hidden_layers": 2, "num_attention_heads": 4,
        "ffn_dim": 4 * hidden, "max_position_embeddings": 256, "do_layer_norm_before": True,
        "activation_function": "relu", "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
        "layerdrop": 0.0, "init_std": 0.02, "enable_bias": True, "layer_norm_elementwise_affine": True,
        "pad_token_id": eot, "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float32", "use_cache": True,
    }
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return tok.get_vocab_size()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "configs", "quickstart"))
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--vocab-size", type=int, default=640)
    parser.add_argument("--no-tokenizer", action="store_true", help="write the data only (standard library only)")
    args = parser.parse_args()
    rows = make_rows(args.rows, args.seed)
    data_dir = os.path.join(args.out, "data")
    os.makedirs(data_dir, exist_ok=True)
    write_jsonl(os.path.join(data_dir, "requests.jsonl"), rows)
    print(f"wrote {len(rows)} rows to {data_dir}/requests.jsonl")
    if not args.no_tokenizer:
        vocab = write_tokenizer_and_config(os.path.join(args.out, "model"), rows, args.vocab_size)
        print(f"wrote tokenizer (vocab {vocab}) and config.json to {args.out}/model")


if __name__ == "__main__":
    main()
