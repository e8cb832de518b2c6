"""Phrases parsed with the real spaCy en_core_web_sm pipeline and TextBlob's bundled chunker."""

import pytest

from mcq_shards.phrases import PhraseParser, textblob_noun_phrases


@pytest.fixture(scope="module")
def parser():
    return PhraseParser()


def texts(spans):
    return [s["text"] for s in spans]


def test_nouns_and_verbs_with_exact_spans(parser):
    caption = "An old woman is dancing on the green grass while a dog quickly runs away."
    [phrases] = parser.parse([caption])
    assert texts(phrases["nouns"]) == ["An old woman", "the green grass", "a dog"]
    assert texts(phrases["verbs"]) == ["is dancing", "quickly runs"]
    for span in phrases["nouns"] + phrases["verbs"]:
        assert caption[span["start"]:span["end"]] == span["text"]


def test_textblob_fallback_when_spacy_finds_no_noun_chunk(parser):
    caption = "Aerial shot, sunset over mountains"
    [phrases] = parser.parse([caption])
    assert phrases["nouns"], "spaCy or TextBlob must find a noun phrase here"
    spans = textblob_noun_phrases("an old woman is dancing")
    assert spans[0] == {"text": "an old woman", "start": 0, "end": 12}


def test_caption_without_nouns_gives_empty_list(parser):
    [phrases] = parser.parse(["running fast"])
    assert phrases["nouns"] == [] and texts(phrases["verbs"]) == ["running"]


def test_unicode_offsets_are_characters(parser):
    caption = "Café owner pours a crème brûlée"
    [phrases] = parser.parse([caption])
    for span in phrases["nouns"]:
        assert caption[span["start"]:span["end"]] == span["text"]


def test_deterministic(parser):
    captions = ["A man rides a red bicycle down the street", "Two women are cooking pasta in a kitchen"]
    assert parser.parse(captions) == parser.parse(list(reversed(captions)))[::-1]
