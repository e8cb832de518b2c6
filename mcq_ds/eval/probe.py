"""The motion probe: does a video's embedding prefer its own caption to the same caption with another verb phrase?

For every caption verb phrase (the spans the shard converter stored) that is among the set's K most frequent
distinct verb phrases, the caption is scored against the K − 1 captions that differ from it only in that phrase,
swapped for each other candidate ("a red square is spinning on dots" against "... is sliding on dots", ...). The
probe's accuracy is the share of such queries whose own caption scores highest, its chance level 1/K. Colour, shape
and scene words are the same in all K captions, so only what the model knows about the action decides: on real
data it is the zero-shot analogue of the BridgeFormer's verb questions, and a model that reads one frame, or whose
frames never interact, should be near chance where the verbs need several frames.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from .embed import embed_texts

Phrases = tuple[str, Sequence[dict]]  # (caption, its stored verb spans {"text", "start", "end"})


def verb_candidates(phrases: Sequence[Phrases], max_verbs: int) -> list[str]:
    """The set's `max_verbs` most frequent distinct verb phrases (case-insensitive; first-seen spelling and first
    appearance break ties), the K swaps every query is scored against."""
    counts: Counter[str] = Counter()
    spelling: dict[str, str] = {}
    for _, verbs in phrases:
        for verb in verbs:
            key = verb["text"].casefold()
            spelling.setdefault(key, verb["text"])
            counts[key] += 1
    return [spelling[key] for key, _ in counts.most_common(max_verbs)]


def motion_probe(model, tokenizer, video: np.ndarray, phrases: Sequence[Phrases], device: torch.device,
                 max_verbs: int = 32, precision: str = "fp32", batch_size: int = 256) -> dict:
    """Probe the video embeddings `video` (N, D; row i belongs to `phrases[i]`) with their captions' verb phrases.

    Returns the accuracy and its chance level in percent, K, the number of queries, and what was left out: verb
    phrases outside the K candidates, and videos whose caption stores none. With fewer than two distinct verb
    phrases in the set there is nothing to swap, and the result says so (`not_run`)."""
    candidates = verb_candidates(phrases, max_verbs)
    if len(candidates) < 2:
        return {"not_run": f"the set's captions carry {len(candidates)} distinct verb phrase(s); the probe needs 2"}
    known = {c.casefold() for c in candidates}
    queries, texts = [], {}
    rare = 0
    for row, (caption, verbs) in enumerate(phrases):
        for verb in verbs:
            if verb["text"].casefold() not in known:
                rare += 1
                continue
            own = caption[verb["start"]:verb["end"]]
            swaps = [caption[:verb["start"]] + c + caption[verb["end"]:] for c in candidates
                     if c.casefold() != own.casefold()]
            queries.append((row, caption, swaps))
            for text in (caption, *swaps):
                texts.setdefault(text, len(texts))
    if not queries:
        return {"not_run": "no caption's verb phrase is among the candidates"}
    text_emb = embed_texts(model, tokenizer, list(texts), device, batch_size, precision)
    video = video / np.maximum(np.linalg.norm(video, axis=1, keepdims=True), 1e-8)
    correct = 0
    for row, caption, swaps in queries:
        scores = text_emb[[texts[t] for t in (caption, *swaps)]] @ video[row]
        correct += bool(scores[0] > scores[1:].max())  # a tie is not a win
    return {
        "accuracy": 100.0 * correct / len(queries),
        "chance": 100.0 / len(candidates),
        "verbs": len(candidates),
        "queries": len(queries),
        "phrases_not_candidates": rare,
        "videos_without_verb": sum(not verbs for _, verbs in phrases),
        "candidates": candidates,
    }


def format_probe(probe: dict) -> str:
    if "not_run" in probe:
        return f"motion probe: not run ({probe['not_run']})"
    return (f"motion probe: {probe['accuracy']:.1f}% of {probe['queries']} captions beat their {probe['verbs'] - 1} "
            f"verb-swapped versions (chance {probe['chance']:.1f}%, K = {probe['verbs']})")
