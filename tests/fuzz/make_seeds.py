#!/usr/bin/env python3
"""Writes the committed seed corpora under tests/fuzz/corpus/ (run once; tools/fuzz.sh adds the repo's own
configs/, tests/data/pipelines/ and tests/data/models/ files at run time). Seeds are small so that libFuzzer's
default input length (the largest seed) stays small: the tokenizers are tests/data/tokenizers/* cut down to
a few hundred vocabulary entries."""
import json
import pathlib
import struct

root = pathlib.Path(__file__).resolve().parents[2]
out = root / "tests/fuzz/corpus"


def write(target, name, data):
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None, pad=True):
    header, blobs, offset = {}, b"", 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs += data
        offset += len(data)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blobs


write("safetensors", "two_tensors.safetensors",
      safetensors({"a.weight": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
                   "b": ("BF16", [3], b"\x80\x3f" * 3)}, {"format": "pt"}))
write("safetensors", "empty.safetensors", safetensors({}))
write("safetensors", "zero_size.safetensors",
      safetensors({"z": ("I64", [0, 4], b""), "u": ("U8", [5], b"\x01\x02\x03\x04\x05")}, pad=False))
write("safetensors", "dtypes.safetensors",
      safetensors({"f64": ("F64", [1], struct.pack("<d", 1.5)), "i32": ("I32", [2], struct.pack("<2i", -1, 7)),
                   "bool": ("BOOL", [2], b"\x00\x01"), "f16": ("F16", [1], b"\x00\x3c"),
                   "f8": ("F8_E4M3", [2], b"\x38\x40")}))


def shrink(name, keep_ids=300, keep_merges=120):
    j = json.loads((root / "tests/data/tokenizers" / name / "tokenizer.json").read_text())
    m = j["model"]
    needed = {t["id"] for t in j.get("added_tokens", [])}
    vocab = {t: i for t, i in m["vocab"].items() if i < keep_ids or i in needed}
    merges = []
    for merge in m["merges"]:
        a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
        if a in vocab and b in vocab and a + b in m["vocab"] and len(merges) < keep_merges:
            vocab[a + b] = m["vocab"][a + b]
            merges.append(merge)
    m["vocab"], m["merges"] = vocab, merges
    write("tokenizer_json", f"{name}.json", json.dumps(j, ensure_ascii=False, separators=(",", ":")))


for name in ["bytelevel", "sentencepiece", "llama3_split", "bloom_split", "lowercase_prefix", "sp_legacy",
             "whitespace_split"]:
    shrink(name)

write("jsonl", "rm_static.jsonl",
      '{"prompt": " Human: hi Assistant:", "response": " hello", "chosen": " hello", "rejected": " go away"}\n'
      '{"prompt": " Human: 2+2? Assistant:", "response": " 4", "chosen": " 4", "rejected": " 5"}\n')
write("jsonl", "pairwise.jsonl", '{"prompt": "hi", "chosen": "hello", "rejected": "no"}\n\n'
      '{"prompt": "caf\\u00e9 \\"q\\"", "chosen": "ok", "rejected": "x", "extra": [1, 2.5, {"n": null}]}\n')
write("jsonl", "sft.jsonl", '{"prompt": "hi", "response": "hello"}\r\n{"prompt": "a", "response": "b"}\n')
write("jsonl", "text.jsonl", '{"text": "plain text"}\n{"text": "more \\n text"}\n')

write("toml", "shapes.toml", '''# every TOML shape the pipeline files use, and some they do not
title = "t"
[model]
path = "models/x"
dtype = 'bf16'
lora.rank = 8
lora."target modules" = ["q_proj", "v_proj"]
[[stage]]
name = "sft"
lr = 1e-4
steps = 10
hooks = [{ plugin = "ema", beta = 0.99 }, { plugin = "counting", every = 2 }]
[[stage]]
name = "rlhf"
generation = { plugin = "kv-cache", max_new_tokens = 40, do_sample = true, nested = { deep = [[1, 2], [3]] } }
flags = [true, false]
when = 1979-05-27T07:32:00Z
text = """multi
line"""
raw = \'\'\'C:\\path\'\'\'
''')

write("hf_config", "llama.json", json.dumps({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
    "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 300, "rms_norm_eps": 1e-6,
    "rope_scaling": {"type": "llama3", "factor": 8.0}, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "eos_token_id": [1, 2], "bos_token_id": None}, indent=2))
