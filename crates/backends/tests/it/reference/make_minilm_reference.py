"""Independent reference for the MiniLM embedder: a plain-numpy BERT forward pass over the same
weights and tokenizer, mean pooling over the attention mask, L2 normalisation.

Regenerate (not needed for the tests; its output is committed next to it):
  pip install --target /tmp/pyref numpy tokenizers safetensors
  PYTHONPATH=/tmp/pyref python3 make_minilm_reference.py MODEL_DIR > minilm_reference.json
"""
import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "Why is the sky blue?",
    "Turn on the garage lights",
    "What does our IoT security policy say about cameras?",
]


def layer_norm(x, weight, bias, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def embed(w, ids):
    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids]
    x = x + w["embeddings.position_embeddings.weight"][:n]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    heads, size = 12, 32
    for i in range(6):
        p = f"encoder.layer.{i}."
        lin = lambda name, v: v @ w[p + name + ".weight"].T + w[p + name + ".bias"]
        q = lin("attention.self.query", x).reshape(n, heads, size).transpose(1, 0, 2)
        k = lin("attention.self.key", x).reshape(n, heads, size).transpose(1, 0, 2)
        v = lin("attention.self.value", x).reshape(n, heads, size).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(size)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores = scores / scores.sum(-1, keepdims=True)
        context = (scores @ v).transpose(1, 0, 2).reshape(n, heads * size)
        attn = lin("attention.output.dense", context)
        x = layer_norm(attn + x, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
        hidden = gelu(lin("intermediate.dense", x))
        out = lin("output.dense", hidden)
        x = layer_norm(out + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def main():
    model_dir = sys.argv[1]
    w = load_file(f"{model_dir}/model.safetensors")
    tokenizer = Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tokenizer.no_padding()
    out = []
    for text in SENTENCES:
        ids = tokenizer.encode(text).ids
        out.append({"text": text, "ids": ids, "vector": [round(float(v), 7) for v in embed(w, ids)]})
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
