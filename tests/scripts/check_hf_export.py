#!/usr/bin/env python3
"""Loads folders exported by dschat with transformers and compares their logits with what dschat computed.

Usage: check_hf_export.py FOLDER=EXPECTED.safetensors [...]
EXPECTED holds input_ids, attention_mask and logits (dschat's, compared at real-token positions).
Exits 1 naming the folder when a load fails or the max abs difference exceeds --tolerance.
"""
import argparse
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("pairs", nargs="+")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    failed = False
    for pair in args.pairs:
        folder, expected_file = pair.split("=", 1)
        expected = load_file(expected_file)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        mask = expected["attention_mask"]
        with torch.no_grad():
            logits = model(input_ids=expected["input_ids"], attention_mask=mask).logits
        diff = (logits - expected["logits"]).abs()[mask.bool()].max().item()
        ok = diff <= args.tolerance
        failed |= not ok
        print(f"{folder}: max abs diff {diff:.3g} {'ok' if ok else 'FAIL'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
