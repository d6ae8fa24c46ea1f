"""The micro-world's vocabulary and its CLIP-format BPE tokenizer files (vocab.json + merges.txt).

The tokenizer is byte-level BPE exactly as CLIP's: the 256 byte symbols and their end-of-word forms, then merges.
The merges are learned here on the world's word list, so every world word (including the held-out trigger words)
is one token; any other word falls back to smaller pieces, as rare words do in real CLIP.
"""
from __future__ import annotations

import itertools
import json
import os
from collections import Counter

from . import render as R
from .concepts import CONCEPTS

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77

_FILLER = ("a", "an", "the", "on", "in", "at", "of", "and", "with", "style", "background", "scene", "shape",
           "photo", "image", "picture", "drawing", "medium", "small", "large", "left", "right", "top",
           "bottom", "center", "flat", "outline", "blurry", "pixel", "field", "beach", "night")


def vocabulary() -> list[str]:
    """Every word of the world's captions and prompts, sorted."""
    words = set(_FILLER) | set(R.COLOURS) | set(R.BASE_SHAPES) | set(R.BASE_STYLES)
    for c in CONCEPTS.values():
        words |= {c.trigger, c.class_word}
        for p in c.content_prompts + c.style_prompts:
            words |= {w.strip(",") for w in p.prompt.split()}
    return sorted(w for w in words if w)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Greedy BPE on a word list (each word once) until every word is a single symbol; ties broken by name."""
    seqs = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for s in seqs:
            for a, b in itertools.pairwise(s):
                counts[(a, b)] += 1
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        new = []
        for s in seqs:
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            new.append(tuple(out))
        seqs = new


def write_tokenizer(folder: str, words: list[str] | None = None) -> int:
    """Write a CLIPTokenizer folder (vocab.json, merges.txt, configs); return the vocabulary size."""
    words = vocabulary() if words is None else words
    merges = learn_merges(words)
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for tok in vocab_list:
        vocab.setdefault(tok, len(vocab))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=0, sort_keys=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2)
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True,
              "clean_up_tokenization_spaces": True, "errors": "replace", **special}
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return len(vocab)
