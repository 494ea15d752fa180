#!/usr/bin/env python3
"""Builds the tokenizer parity fixtures in tests/data/tokenizers/ (deterministic: fixed seed, no downloads).

  corpus.jsonl            one JSON string per line: >= 10,000 varied texts (many scripts, emoji with ZWJ,
                          whitespace runs, tabs, newlines, code, numbers, contractions, special tokens inline)
  <name>/tokenizer.json   a tokenizer trained or derived here with HF `tokenizers`
  <name>/expected.jsonl   for each corpus line used: {"line": i, "ids": [...]} (add_special_tokens=True) and,
                          only where they differ from what they default to (keeps the files small, uncompressed):
                          "ids_plain"    ids with add_special_tokens=False   (default: ids minus the template's)
                          "decoded"      HF decode(ids_plain)                (default: the corpus line)
                          "decoded_skip" HF decode(ids, skip_special=True)   (default: decoded)
                          "decoded_full" HF decode(ids), given on every 10th line only
  opt_style/              vocab.json + merges.txt + tokenizer_config.json written from `bytelevel` (OPT layout)

Main tokenizers (every line): bytelevel (GPT-2 style) and sentencepiece (LLaMA-2 style, byte_fallback).
Variants (every 10th line): other pre-tokenizers/normalizers over the same trained models.
Usage: .venv/bin/python tools/make_tokenizer_fixtures.py [out_dir]
"""
import json
import os
import random
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SEED = 20240611
N_LINES = 10_000

WORDS = ("the of and to in is you that it he was for on are as with his they at be this have from or one had "
         "by word but not what all were we when your can said there use an each which she do how their if will "
         "up other about out many then them these so some her would make like him into time has look two more "
         "write go see number no way could people my than first water been call who oil its now find long down "
         "day did get come made may part tokenizer model training reward policy gradient Hello World OpenAI LLaMA "
         "BLOOM OPT DeepSpeed Chat").split()
CONTRACTIONS = ["don't", "it's", "we're", "they've", "I'm", "you'll", "he'd", "can't", "IT'S", "WE'RE", "I'LL",
                "won't", "y'all", "rock'n'roll", "'quoted'", "O'Neil", "she'S", "'tis"]
SCRIPTS = {
    "latin": "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœšžłńśźżğışŞĞİ",
    "greek": "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΣΩάέήίόύώϊϋς",
    "cyrillic": "абвгдежзийклмнопрстуфхцчшщъыьэюяАБВГДЕЖЗЁёіїєґ",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "hebrew": "אבגדהוזחטיכלמנסעפצקרשת",
    "devanagari": "अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह\u093e\u093f\u0940\u0941\u0942\u0947\u094d",
    "thai": "กขคงจฉชซญดตถทธนบปผพฟภมยรลวศษสหอฮ\u0e31\u0e34\u0e35\u0e48\u0e49",
    "cjk": "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后",
    "hangul": "가나다라마바사아자차카타파하한국어입니다세계안녕",
    "kana": "あいうえおかきくけこさしすせそたちつてとなにぬねのアイウエオカキクケコ",
    "armenian": "աբգդեզէըթժիլխծկհձղճմյնշոչպջռսվտրցւփքօֆ",
    "georgian": "აბგდევზთიკლმნოპჟრსტუფქღყშჩცძწჭხჯჰ",
}
EMOJI = ["😀", "😂", "🥲", "👍", "👍🏽", "❤️", "🔥", "🎉", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈",
         "👩🏾\u200d💻", "🧑\u200d🚀", "🇯🇵", "🇩🇪", "✨", "🙏🏻", "☕", "⚡", "🤖", "1️⃣"]
PUNCT = list(".,;:!?…—–-()[]{}<>\"'`~@#$%^&*_+=|\\/") + ["。", "，", "、", "।", "۔", "،", "¿", "¡", "«", "»",
                                                       "“", "”", "‘", "’", "•", "€", "£", "¥", "©", "™", "°"]
CODE = ["def f(x):\n    return x * 2", "for (int i = 0; i < n; ++i) { sum += a[i]; }", "if x != None and y >= 3:",
        "#include <vector>", "print(f\"{name!r}: {value:.3f}\")", "SELECT * FROM users WHERE id = 42;",
        "const x = () => { return [1, 2, 3].map(v => v ** 2); };", "fn main() { println!(\"hi\"); }",
        "\tif (ok) {\n\t\tgo();\n\t}", "x = {'a': 1, \"b\": [2, 3]}  # comment", "$ ls -la /usr/local/bin | grep py",
        "<div class=\"row\">&nbsp;</div>", "a_b_c = __init__(self, *args, **kwargs)", "0x1F + 0b1010 - 1e-9"]
WHITESPACE = [" ", "  ", "   ", "\t", "\t\t", " \t ", "\n", "\n\n", "\r\n", "    ", " \n ", "\u3000", "\u00a0",
              "\u2009", "\u202f"]
SPECIAL_INLINE = ["<|endoftext|>", "<s>", "</s>", "<unk>", "<|user|>", "[MASK_X]", "<0x41>", "hello world"]


def rand_word(rng):
    r = rng.random()
    if r < 0.45:
        w = rng.choice(WORDS)
        return w.capitalize() if rng.random() < 0.15 else (w.upper() if rng.random() < 0.05 else w)
    if r < 0.55:
        return rng.choice(CONTRACTIONS)
    if r < 0.65:
        return str(rng.choice([rng.randint(0, 9), rng.randint(10, 999), rng.randint(1000, 10**9)])) + \
            rng.choice(["", "", ".5", ",000", "%", "th", "km", "¾", "²"])
    alphabet = SCRIPTS[rng.choice(sorted(SCRIPTS))]
    n = rng.randint(1, 8)
    return "".join(rng.choice(alphabet) for _ in range(n))


def make_line(rng):
    kind = rng.random()
    if kind < 0.08:
        return rng.choice(CODE)
    parts = []
    for _ in range(rng.randint(1, 9)):
        r = rng.random()
        if r < 0.62:
            parts.append(rand_word(rng))
        elif r < 0.74:
            parts.append(rng.choice(PUNCT) * rng.choice([1, 1, 1, 2, 3]))
        elif r < 0.82:
            parts.append(rng.choice(EMOJI))
        elif r < 0.97:
            parts.append(rng.choice(WHITESPACE))
        else:
            parts.append(rng.choice(SPECIAL_INLINE))
        sep = rng.random()
        parts.append(" " if sep < 0.8 else ("" if sep < 0.9 else rng.choice(WHITESPACE)))
    line = "".join(parts)
    r = rng.random()
    if r < 0.1:
        line = line.rstrip(" ")
    elif r < 0.15:
        line = " " + line
    elif r < 0.18:
        line = "   " + line + "  "
    elif r < 0.20:
        line = ""  if rng.random() < 0.3 else rng.choice(WHITESPACE)
    return line


def make_corpus():
    rng = random.Random(SEED)
    return [make_line(rng) for _ in range(N_LINES)]


def train_bytelevel(train_lines):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(train_lines, trainer)
    eot = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", eot)])
    # Added tokens with each flag HF knows, to check they are split out exactly as HF does.
    tok.add_special_tokens([AddedToken("<|user|>", lstrip=True, rstrip=True, special=True, normalized=False)])
    tok.add_tokens([AddedToken("[MASK_X]", single_word=False, lstrip=False, rstrip=True, normalized=False),
                    AddedToken("hello world", single_word=True, normalized=True)])
    return tok


def train_sentencepiece(train_lines):
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    # The alphabet is chosen here (most frequent first, ties by code point): HF's limit_alphabet breaks ties at
    # the cut-off in hash order, which would make reruns differ. Rarer characters go to byte fallback.
    counts = {}
    for line in train_lines:
        for ch in line.replace(" ", "▁"):
            counts[ch] = counts.get(ch, 0) + 1
    alphabet = sorted(counts, key=lambda ch: (-counts[ch], ch))[:400]
    trainer = trainers.BpeTrainer(vocab_size=1750, special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=400,
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(train_lines, trainer)
    # Rebuild LLaMA-style: specials at 0..2, the 256 byte tokens <0x00>..<0xFF> at 3..258 inside the model vocab.
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    specials = ["<unk>", "<s>", "</s>"]
    new_vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        new_vocab[f"<0x{b:02X}>"] = len(new_vocab)
    for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        if t not in new_vocab:
            new_vocab[t] = len(new_vocab)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in j["model"]["merges"]]
    model = models.BPE(vocab=new_vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    out = Tokenizer(model)
    out.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    out.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    out.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    out.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return out


LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BLOOM_PATTERN = " ?[^(\\s|[.,!?…。，、।۔،])]+"


def variants(byte_json, sp_json):
    """Same trained models, other pipelines: (name, tokenizer json dict)."""
    out = []
    j = json.loads(byte_json)
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    j["model"]["ignore_merges"] = True
    out.append(("llama3_split", j))
    j = json.loads(byte_json)
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": BLOOM_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    j["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    out.append(("bloom_split", j))
    j = json.loads(byte_json)
    j["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Strip", "strip_left": True, "strip_right": True},
                                                           {"type": "Lowercase"}]}
    j["pre_tokenizer"]["add_prefix_space"] = True
    # Older files spell merges as "a b" strings.
    j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    out.append(("lowercase_prefix", j))
    j = json.loads(sp_json)  # LLaMA-2 "legacy" layout: Prepend + Replace normalizer, no pre-tokenizer.
    j["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                           {"type": "Replace", "pattern": {"String": " "},
                                                            "content": "▁"}]}
    j["pre_tokenizer"] = None
    j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    out.append(("sp_legacy", j))
    j = json.loads(sp_json)
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    j["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    j["model"]["fuse_unk"] = False
    out.append(("sp_metaspace_always", j))
    j = json.loads(sp_json)  # no byte fallback: unknown characters become (fused) <unk>
    j["model"]["byte_fallback"] = False
    out.append(("sp_unk", j))
    j = json.loads(byte_json)
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"},
                                                                {"type": "ByteLevel", "add_prefix_space": False,
                                                                 "trim_offsets": True, "use_regex": True}]}
    out.append(("whitespace_split", j))
    return out


def write_expected(path, tok, lines, indices):
    n_template = len(tok.encode("", add_special_tokens=True).ids)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for i in indices:
            enc = tok.encode(lines[i], add_special_tokens=True)
            rec = {"line": i, "ids": enc.ids}
            plain = tok.encode(lines[i], add_special_tokens=False).ids
            if plain != enc.ids[n_template:]:
                rec["ids_plain"] = plain
            dec = tok.decode(plain, skip_special_tokens=False)
            if dec != lines[i]:
                rec["decoded"] = dec
            dec_skip = tok.decode(enc.ids, skip_special_tokens=True)
            if dec_skip != dec:
                rec["decoded_skip"] = dec_skip
            if i % 10 == 0:
                rec["decoded_full"] = tok.decode(enc.ids, skip_special_tokens=False)
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def save_json(path, obj):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                                               "tokenizers")
    os.makedirs(out, exist_ok=True)
    lines = make_corpus()
    with open(os.path.join(out, "corpus.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    train = lines[: N_LINES // 2]
    byte_tok = train_bytelevel(train)
    sp_tok = train_sentencepiece(train)
    every = list(range(len(lines)))
    for name, tok, idx in [("bytelevel", byte_tok, every), ("sentencepiece", sp_tok, every)]:
        os.makedirs(os.path.join(out, name), exist_ok=True)
        save_json(os.path.join(out, name, "tokenizer.json"), json.loads(tok.to_str()))
        write_expected(os.path.join(out, name, "expected.jsonl"), tok, lines, idx)
    for name, j in variants(byte_tok.to_str(), sp_tok.to_str()):
        tok = Tokenizer.from_str(json.dumps(j))
        os.makedirs(os.path.join(out, name), exist_ok=True)
        save_json(os.path.join(out, name, "tokenizer.json"), j)
        write_expected(os.path.join(out, name, "expected.jsonl"), tok, lines, every[::10])
    # OPT layout of the byte-level model: vocab.json + merges.txt (+ config naming the special tokens).
    opt = os.path.join(out, "opt_style")
    os.makedirs(opt, exist_ok=True)
    j = json.loads(byte_tok.to_str())
    vocab = dict(j["model"]["vocab"])
    with open(os.path.join(opt, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(opt, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n")
        for m in j["model"]["merges"]:
            f.write((" ".join(m) if isinstance(m, list) else m) + "\n")
    save_json(os.path.join(opt, "tokenizer_config.json"),
              {"add_bos_token": True, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": None, "model_max_length": 2048})
    sizes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"wrote {len(lines)} lines and {2 + len(variants(byte_tok.to_str(), sp_tok.to_str()))} tokenizers "
          f"to {out} ({sizes / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
