"""Multiple-choice questions for the MCQ pretext task: a noun or verb phrase masked in the caption is the answer.

Each training sample gets one question per iteration: one stored noun or verb phrase is drawn, its
words in the caption are replaced by ``[MASK]`` tokens (as many as each word has word pieces, so the
question's length in tokens is the caption's), and the answer is the phrase behind a fixed
three-``[MASK]`` prompt. Two masking modes exist:

* ``"parity"`` reproduces the original ``build_question``: every occurrence of every phrase word is
  masked anywhere in the caption, with its quirks (only commas are stripped before matching, case is
  matched as-is or ``capitalize()``-d, every apostrophe is then deleted). Use it to reproduce the
  published models.
* ``"span"`` masks exactly the stored character span of the phrase and leaves the rest of the
  caption untouched, which is what the phrase extraction meant.

This runs in data-loader workers, once per sample, so word-piece counts are memoised per word.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple, TypedDict

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MASK = "[MASK]"
ANSWER_PROMPT = "[MASK] [MASK] [MASK] "

Mode = Literal["parity", "span"]
QuestionType = Literal["noun", "verb"]
Kind = Literal["noun", "verb", "none"]

# A caption word for the no-phrase fallback: letters/digits, with inner apostrophes ("man's").
_WORD = re.compile(r"\w+(?:'\w+)*")


class Phrase(TypedDict):
    """A phrase as the shard converter stores it: its text and its character span in the caption."""

    text: str
    start: int
    end: int


class QuestionAnswer(NamedTuple):
    """One sample's MCQ text. ``kind`` says where the phrase came from; ``"none"`` means the caption
    had no stored phrase at all and a random caption word was used, which callers should count."""

    question: str
    answer: str
    phrase: str
    kind: Kind


class WordPieceCounter:
    """Number of tokens a tokenizer gives one word, without special tokens.

    Captions reuse a small vocabulary, so a plain dict (bounded by the number of distinct caption
    words) turns the per-sample tokenizer calls into lookups. The object pickles with its tokenizer,
    so it can be built before the data-loader workers start.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._counts: dict[str, int] = {}

    def __call__(self, word: str) -> int:
        count = self._counts.get(word)
        if count is None:
            count = len(self._tokenizer(word, add_special_tokens=False)["input_ids"])
            self._counts[word] = count
        return count


def sample_phrase(
    caption: str,
    nouns: Sequence[Phrase],
    verbs: Sequence[Phrase],
    question_type: QuestionType,
    rng: random.Random,
) -> tuple[Phrase, Kind]:
    """Draw the phrase to ask about, uniformly from the stored list.

    Verb questions fall back to a noun phrase when the caption has no verb phrase, as in the original
    (stage 3 of the curriculum). With no phrase at all the original meant to ask about a random
    caption word (its code indexed the wrong list and crashed instead); that intent is kept, so the
    sample still carries a real question, and the kind ``"none"`` lets the caller count it. A
    caption without any word yields an empty phrase, which masks nothing.
    """
    if question_type == "verb" and verbs:
        return rng.choice(verbs), "verb"
    if nouns:
        return rng.choice(nouns), "noun"
    words = list(_WORD.finditer(caption))
    if not words:
        return Phrase(text="", start=0, end=0), "none"
    word = rng.choice(words)
    return Phrase(text=word.group(), start=word.start(), end=word.end()), "none"


def _masks(count: int) -> str:
    return " ".join([MASK] * count)


def parity_question(caption: str, phrase: str, count_pieces: Callable[[str], int]) -> str:
    """The original ``build_question``: mask every caption word equal to any phrase word.

    The caption is split on single spaces (so runs of spaces survive as empty words). A caption word
    matches when, with its commas removed, it equals a phrase word as written or ``capitalize()``-d;
    it is then replaced by one ``[MASK]`` per word piece of the comma-free word. Other punctuation is
    not stripped ("dog." never matches "dog"). Finally every apostrophe is deleted and the ends are
    stripped.
    """
    targets = set(phrase.split(" "))
    targets |= {word.capitalize() for word in targets}
    words = []
    for word in caption.split(" "):
        bare = word.replace(",", "")
        words.append(_masks(count_pieces(bare)) if bare in targets else word)
    return " ".join(words).replace("'", "").strip()


def span_question(caption: str, phrase: Phrase, count_pieces: Callable[[str], int]) -> str:
    """Mask only the phrase's character span: each of its words becomes one ``[MASK]`` per word
    piece; everything outside the span, punctuation included, is kept.

    The span must cover the phrase text (compared case-insensitively and without white space, since
    phrase extractors such as TextBlob lower-case and split "woman's" into "woman 's"); a mismatch
    means the shard converter stored a wrong span, and masking the wrong words would silently teach
    nonsense, so it raises ``ValueError``.
    """
    start, end = phrase["start"], phrase["end"]
    covered = caption[start:end]
    if "".join(covered.split()).casefold() != "".join(phrase["text"].split()).casefold():
        raise ValueError(f"phrase {phrase!r} does not match caption span {covered!r} of {caption!r}")
    masks = " ".join(_masks(count_pieces(word)) for word in covered.split())
    return caption[:start] + masks + caption[end:]


class QuestionBuilder:
    """Builds one sample's question and answer from its caption and stored phrases.

    Build it once per data set with the text tokenizer (the mask counts must be the model's word
    pieces) and call it per sample with the worker's own ``random.Random``, so runs are reproducible.
    ``mode`` is ``"span"`` by default (the recommended masking); ``"parity"`` reproduces the
    original, including its deletion of apostrophes from noun phrases (its stored noun lists were
    Python-quoted strings and it unquoted them that way). A caption without any phrase has no
    original behaviour to reproduce (the original crashed), so in both modes the drawn fallback word
    is masked by its span: exactly one word is hidden, whatever punctuation surrounds it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, mode: Mode = "span") -> None:
        if mode not in ("parity", "span"):
            raise ValueError(f"unknown question mode {mode!r}; expected 'parity' or 'span'")
        self.mode = mode
        self.count_pieces = WordPieceCounter(tokenizer)

    def __call__(
        self,
        caption: str,
        nouns: Sequence[Phrase],
        verbs: Sequence[Phrase],
        question_type: QuestionType,
        rng: random.Random,
    ) -> QuestionAnswer:
        phrase, kind = sample_phrase(caption, nouns, verbs, question_type, rng)
        if self.mode == "span" or kind == "none":
            text = phrase["text"]
            question = span_question(caption, phrase, self.count_pieces)
        else:
            text = phrase["text"].replace("'", "") if kind == "noun" else phrase["text"]
            text = text.strip()
            question = parity_question(caption, text, self.count_pieces)
        return QuestionAnswer(question, ANSWER_PROMPT + text, text, kind)


def tokenize_texts(
    tokenizer: PreTrainedTokenizerBase,
    captions: Sequence[str],
    questions: Sequence[str],
    answers: Sequence[str],
    max_length: int | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """Tokenise a batch's captions, questions and answers in the collate function (in the workers,
    not on the training process, unlike the original).

    Each group is padded to its longest member and truncated to ``max_length`` (the tokenizer's
    model maximum when None, as the original's ``padding=True, truncation=True``). ``[MASK]`` in the
    strings is the tokenizer's mask token. Returns ``{"text"|"question"|"answer": {"input_ids",
    "attention_mask"}}``; token type ids are dropped because DistilBERT takes none.
    """
    batch = {}
    for name, texts in (("text", captions), ("question", questions), ("answer", answers)):
        encoded = tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        batch[name] = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    return batch
