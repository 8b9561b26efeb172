"""Word-level corpora in the Penn Treebank format, and the King James Bible converted to it.

PTB format (Mikolov's ``ptb.{train,valid,test}.txt``): one sentence per line, lower-case tokens
separated by spaces, rare words already replaced by ``<unk>``, numbers by ``N``. Every line end
becomes an ``<eos>`` token. The vocabulary is built from the training split: the most frequent
``vocab_size`` tokens (ties broken alphabetically), every other token maps to ``<unk>``.

The KJV corpus (Debian ``bible-kjv``, public domain, ~790K words: about PTB's size) is converted
once into the same format: one verse per line, lower case, numbers as ``N``, punctuation dropped,
``'s`` split off as PTB does. Chapters are dealt round-robin into the splits (of every 20
chapters, one goes to valid and one to test) so that every book is represented in each.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data import atomic_write_bytes, cache_dir, candidate_dirs, find_files
from harness.errors import DatasetMissing

SPLITS = ("train", "valid", "test")
UNK, EOS = "<unk>", "<eos>"


@dataclass
class Corpus:
    vocab: list[str]
    train: np.ndarray  # int64 token ids
    valid: np.ndarray
    test: np.ndarray


def read_tokens(path: Path) -> list[str]:
    tokens: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = line.split()
            if words:
                tokens += words
                tokens.append(EOS)
    return tokens


def build_vocab(tokens: list[str], vocab_size: int) -> list[str]:
    counts = Counter(tokens)
    for special in (UNK, EOS):
        counts.pop(special, None)
    ranked = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - 2]
    return [EOS, UNK, *ranked]


def encode(tokens: list[str], vocab: list[str]) -> np.ndarray:
    index = {w: i for i, w in enumerate(vocab)}
    unk = index[UNK]
    return np.fromiter((index.get(t, unk) for t in tokens), dtype=np.int64, count=len(tokens))


def load_corpus(files: dict[str, Path], vocab_size: int) -> Corpus:
    """``files`` maps train/valid/test to PTB-format files."""
    tokens = {split: read_tokens(files[split]) for split in SPLITS}
    vocab = build_vocab(tokens["train"], vocab_size)
    return Corpus(vocab, *(encode(tokens[s], vocab) for s in SPLITS))


def ptb_files(data_dir: str | None, prefix: str = "ptb") -> dict[str, Path]:
    names = [f"{prefix}.{s}.txt" for s in SPLITS]
    found = find_files(
        "Penn Treebank", "ptb", names, data_dir,
        "PTB is not packaged for Debian: put ptb.train.txt, ptb.valid.txt and ptb.test.txt (from "
        "the simple-examples archive of Mikolov's RNNLM page) in <data_dir>/ptb, with --data-dir "
        "or BATCHSCALE_DATA_DIR")
    return {s: found[n] for s, n in zip(SPLITS, names)}


# --- the King James Bible ----------------------------------------------------------------------

_VERSE = re.compile(r"^\s+\d+\s+(.*)$")
_HEADING = re.compile(r"^\S.*\s\d+$")


def kjv_to_ptb(text: str) -> tuple[list[str], list[str], list[str]]:
    """Split the ``bible`` command's output into PTB-style train/valid/test lines."""
    splits: tuple[list[str], list[str], list[str]] = ([], [], [])
    chapter = -1
    for line in text.splitlines():
        if _HEADING.match(line):
            chapter += 1
            continue
        m = _VERSE.match(line)
        if not m or chapter < 0:
            continue
        words = normalize_words(m.group(1))
        if words:
            slot = chapter % 20
            splits[1 if slot == 18 else 2 if slot == 19 else 0].append(" ".join(words))
    return splits


def normalize_words(text: str) -> list[str]:
    text = re.sub(r"(\w)'s\b", r"\1 's", text.lower())
    text = re.sub(r"\d+(?:[.,]\d+)*", " N ", text)
    text = re.sub(r"[^a-z'N ]+", " ", text)
    words = (w if w == "'s" else w.strip("'") for w in text.split())
    return [w for w in words if w]


def kjv_files(data_dir: str | None) -> dict[str, Path]:
    """PTB-format KJV splits: a user's copy under the data folders, else converted and cached."""
    names = [f"kjv.{s}.txt" for s in SPLITS]
    for d in candidate_dirs("kjv", data_dir):
        if all((d / n).is_file() for n in names):
            return {s: d / n for s, n in zip(SPLITS, names)}
    out = cache_dir() / "kjv"
    if not all((out / n).is_file() for n in names):
        bible = shutil.which("bible")
        if bible is None:
            raise DatasetMissing(
                "King James Bible not found: the command 'bible' of the Debian package bible-kjv is "
                "not installed (apt-get install bible-kjv); or put kjv.train.txt, kjv.valid.txt and "
                "kjv.test.txt in <data_dir>/kjv, with --data-dir or BATCHSCALE_DATA_DIR")
        text = subprocess.run([bible, "-l100000", "gen1:1-rev22:21"], check=True, capture_output=True,
                              text=True).stdout
        for name, lines in zip(names, kjv_to_ptb(text)):
            atomic_write_bytes(out / name, ("\n".join(lines) + "\n").encode())
    return {s: out / n for s, n in zip(SPLITS, names)}
