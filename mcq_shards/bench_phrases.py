"""What the stored phrases make of MCQ's questions: ``python -m mcq_shards.bench_phrases CAPTIONS...``.

For each caption file (``.txt``: one caption a line; ``.csv``: its ``name`` or ``caption`` column; ``.tsv``: the
first column) and each noun-phrase source of the converter (``--phrases spacy`` and ``textblob``), it prints how
many caption words a ``--question-mode parity`` question masks on average (the original's every-occurrence
masking, over every stored noun phrase of every caption), the share of questions whose phrase holds an article
and so masks every a/an/the of the caption, and the captions left without a noun phrase.

Where NLTK's Brown corpus is installed (``NLTK_DATA``), it also runs the real TextBlob extractor and prints how
often the offline reproduction's noun phrases equal its (per caption, before the single-noun fallback), with the
phrase-level precision and recall. Without NLTK's Punkt tables the real extractor's sentence splitting is NLTK's
untrained Punkt (captions are mostly one sentence).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from mcq_shards.phrases import PhraseParser, fast_np_phrases

ARTICLES = {"a", "an", "the"}


def read_captions(path: Path) -> list[str]:
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        column = "name" if rows and "name" in rows[0] else "caption"
        return [r[column].strip() for r in rows if r[column].strip()]
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n").split("\t")[0] if path.suffix == ".tsv" else line.strip() for line in f]
    return [line.strip() for line in lines if line.strip()]


def masked_words(caption: str, phrase: str) -> int:
    """Caption words the original's build_question masks for this phrase (every occurrence of every word)."""
    from mcq_ds.data.questions import MASK, parity_question

    return parity_question(caption, phrase, lambda word: 1).split(" ").count(MASK)


def question_stats(captions: list[str], nouns: list[list[str]]) -> tuple[float, float, float]:
    """(mean masked words per question, share of questions masking every article, share of captions without)."""
    words, articles, asked = 0.0, 0.0, 0
    for caption, phrases in zip(captions, nouns):
        if not phrases:
            continue
        asked += 1
        words += sum(masked_words(caption, p) for p in phrases) / len(phrases)
        articles += sum(bool(ARTICLES & set(p.lower().split())) for p in phrases) / len(phrases)
    return words / asked, articles / asked, 1 - asked / len(captions)


def real_textblob():
    """TextBlob's own noun_phrases, or None when NLTK's Brown corpus is not installed."""
    import nltk

    try:
        nltk.data.find("corpora/brown/")
    except LookupError:
        return None
    from textblob import TextBlob

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
    except LookupError:
        import textblob.en.np_extractors as extractors
        from nltk.tokenize import PunktSentenceTokenizer, word_tokenize

        punkt = PunktSentenceTokenizer()
        extractors.nltk.word_tokenize = lambda text: [t for s in punkt.tokenize(text)
                                                      for t in word_tokenize(s, preserve_line=True)]
    return lambda caption: list(TextBlob(caption).noun_phrases)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("captions", nargs="+", type=Path, help="caption files (.txt, .csv, .tsv)")
    args = parser.parse_args(argv)
    parsers = {source: PhraseParser(source) for source in ("spacy", "textblob")}
    real = real_textblob()
    print(f"{'captions':28s} {'phrases':9s} {'masked words':>13s} {'every a/an/the':>15s} {'no noun':>8s}"
          + (f" {'= real TextBlob':>16s} {'precision':>10s} {'recall':>7s}" if real else ""))
    for path in args.captions:
        captions = read_captions(path)
        for source, phrase_parser in parsers.items():
            nouns = [[s["text"] for s in p["nouns"]] for p in phrase_parser.parse(captions)]
            words, articles, empty = question_stats(captions, nouns)
            line = f"{f'{path.name} ({len(captions)})':28s} {source:9s} {words:13.2f} {100 * articles:14.1f}% " \
                   f"{100 * empty:7.1f}%"
            if real and source == "textblob":
                ours = [fast_np_phrases([(t.text, t.tag_) for t in doc]) for doc in phrase_parser.nlp.pipe(captions)]
                theirs = [real(c) for c in captions]
                same = sum(a == b for a, b in zip(ours, theirs)) / len(captions)
                hits = sum(len(set(a) & set(b)) for a, b in zip(ours, theirs))
                line += f" {100 * same:15.1f}% {hits / max(1, sum(map(len, map(set, ours)))):10.3f} " \
                        f"{hits / max(1, sum(map(len, map(set, theirs)))):7.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
