#!/usr/bin/env python3
"""Scores texts with a dschat reward-model folder through transformers alone, as a user of the export would.

The folder is an HF checkpoint of the base model (AutoModel) plus value_head.safetensors ("v_head.weight",
[1, hidden]); the score of a text is the value head applied to the final hidden state of its last token.

Usage: score_reward_model.py DIR TEXT...   prints a JSON list of scores
"""
import json
import sys

import torch
from safetensors.torch import load_file
import transformers

transformers.utils.logging.disable_progress_bar()
from transformers import AutoModel, AutoTokenizer  # noqa: E402


def main():
    folder, texts = sys.argv[1], sys.argv[2:]
    model = AutoModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    head = load_file(f"{folder}/value_head.safetensors")["v_head.weight"].float()
    scores = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids
            hidden = model(input_ids=ids).last_hidden_state[0, -1]
            scores.append(float(hidden @ head[0]))
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
