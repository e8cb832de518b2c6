"""CLIP's byte-pair tokenizer, with the call convention of a Hugging Face tokenizer.

The data pipeline talks to every tokenizer the same way (`tokenizer(texts, padding=True, truncation=True,
max_length=..., return_tensors="pt")`, `tokenizer(word, add_special_tokens=False)`, `save_pretrained`), so the CLIP
tokenizer is a Hugging Face `CLIPTokenizer` built from OpenAI's own merge list, the `bpe_simple_vocab_16e6.txt.gz`
that ships inside the `open_clip_torch` wheel; nothing is downloaded. Two things make its ids equal OpenAI's and
open_clip's for every text:

* the text is cleaned first as OpenAI's tokenizer does (ftfy, HTML entities unescaped twice, whitespace collapsed);
  Hugging Face's CLIP tokenizer only lower-cases and collapses whitespace, so "Tom &amp; Jerry’s" would differ;
* truncation keeps the first `max_length - 2` tokens between start and end of text, which is OpenAI's
  "truncate, then force the last token to be end-of-text".

Padding uses the end-of-text id (Hugging Face's choice; OpenAI pads with 0). The model never reads padded ids: text
features are taken at the last real token, found from the attention mask.

For MCQ's questions the vocabulary gets one more token, `[MASK]` (id 49408), when the model's embedding table has
a row for it (`vocab_size > 49408`): the question builder writes the literal `[MASK]`, which must be one token, as
in DistilBERT, and not the three BPE pieces of "[mask]".
"""
from __future__ import annotations

import gzip
import html
from pathlib import Path
from typing import Any

import ftfy
from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ..config import BPE_VOCAB_SIZE
from .weights_io import shipped_file

MASK = "[MASK]"


def bpe_vocabulary_file() -> Path:
    """OpenAI's merge list, as the open_clip_torch wheel ships it."""
    return shipped_file("open_clip", "bpe_simple_vocab_16e6.txt.gz", "pip install open_clip_torch")


def _clean(text: Any) -> Any:
    """OpenAI's text cleaning (lower-casing is left to the tokenizer's normaliser); lists are cleaned item by item."""
    if isinstance(text, str):
        return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split())
    if isinstance(text, (list, tuple)):
        return [_clean(t) for t in text]
    return text


class ClipBpeTokenizer(CLIPTokenizer):
    """Hugging Face's CLIP tokenizer that cleans text as OpenAI's does before encoding it."""

    def _encode_plus(self, text: Any, text_pair: Any = None, *args: Any, **kwargs: Any):
        return super()._encode_plus(_clean(text), _clean(text_pair), *args, **kwargs)


def build_clip_tokenizer(vocab_size: int = BPE_VOCAB_SIZE + 1, max_length: int = 77) -> ClipBpeTokenizer:
    """The tokenizer for a model with `vocab_size` embedding rows: OpenAI's 49,408 tokens, plus `[MASK]` when the
    model has a row for it."""
    if vocab_size not in (BPE_VOCAB_SIZE, BPE_VOCAB_SIZE + 1):
        raise ValueError(f"a CLIP text tower has {BPE_VOCAB_SIZE} token embeddings, or {BPE_VOCAB_SIZE + 1} with "
                         f"MCQ's [MASK]; this one has {vocab_size}")
    with gzip.open(bpe_vocabulary_file(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + BPE_VOCAB_SIZE - 512 - 2]]  # line 0 is a header
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = ClipBpeTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                 model_max_length=max_length)
    if vocab_size > BPE_VOCAB_SIZE:
        tokenizer.add_special_tokens({"mask_token": MASK})
    return tokenizer


def load_clip_tokenizer(folder: str | Path | None, vocab_size: int, max_length: int) -> ClipBpeTokenizer:
    """A tokenizer saved with `save_pretrained`, or, without a folder, the one built from the BPE file."""
    if folder is None:
        return build_clip_tokenizer(vocab_size, max_length)
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder}: no tokenizer.json; not a saved CLIP tokenizer")
    tokenizer = ClipBpeTokenizer.from_pretrained(folder, local_files_only=True)
    if len(tokenizer) > vocab_size:
        raise ValueError(f"{folder}: the tokenizer has {len(tokenizer)} tokens, the model only {vocab_size} rows")
    return tokenizer
