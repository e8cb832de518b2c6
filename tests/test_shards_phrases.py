"""Phrases parsed with the real spaCy en_core_web_sm pipeline: the original's TextBlob noun phrases (reproduced over
spaCy's tags), spaCy noun chunks, the verb pattern, and how a phrase given as text maps to its caption span."""

import pytest

from mcq_shards.phrases import PhraseParser, brown_tag, fast_np_phrases, locate, locate_all, textblob_noun_phrases


@pytest.fixture(scope="module")
def parser():
    return PhraseParser("textblob")


@pytest.fixture(scope="module")
def chunks():
    return PhraseParser("spacy")


def texts(spans):
    return [s["text"] for s in spans]


CAPTION = "An old woman is dancing on the green grass while a dog quickly runs away."


def test_textblob_phrases_are_lower_case_without_determiners(parser):
    [phrases] = parser.parse([CAPTION])
    assert texts(phrases["nouns"]) == ["old woman", "green grass"]  # the original's example (SPEC 2.1)
    assert [CAPTION[s["start"]:s["end"]] for s in phrases["nouns"]] == ["old woman", "green grass"]
    assert texts(phrases["verbs"]) == ["is dancing", "quickly runs"]
    # The real extractor's answers for these (TextBlob 0.20.1 on NLTK's Brown corpus): its tagger reads an unseen
    # capitalised word as a name and an -s word it has not seen as a plural noun.
    [capital] = parser.parse(["Aerial view of the city"])
    assert capital["nouns"] == [{"text": "aerial", "start": 0, "end": 6}]  # lower-cased text, the caption's span
    [runs] = parser.parse(["A dog runs across the park"])
    assert texts(runs["nouns"]) == ["dog runs"]


def test_textblob_falls_back_to_single_nouns(parser):
    [phrases] = parser.parse(["a dog in the park"])  # no merged phrase: NLTK's NN* words instead
    assert texts(phrases["nouns"]) == ["dog", "park"]
    [none] = parser.parse(["running fast"])
    assert none["nouns"] == [] and texts(none["verbs"]) == ["running"]


def test_spacy_chunks_keep_determiners_and_case(chunks):
    [phrases] = chunks.parse([CAPTION])
    assert texts(phrases["nouns"]) == ["An old woman", "the green grass", "a dog"]
    assert texts(phrases["verbs"]) == ["is dancing", "quickly runs"]
    for span in phrases["nouns"] + phrases["verbs"]:
        assert CAPTION[span["start"]:span["end"]] == span["text"]
    [fallback] = chunks.parse(["Aerial shot, sunset over mountains"])
    assert fallback["nouns"], "spaCy or TextBlob must find a noun phrase here"
    assert textblob_noun_phrases("an old woman is dancing")[0] == {"text": "an old woman", "start": 0, "end": 12}


def test_fast_np_rules_with_browns_quirks():
    """FastNPExtractor's merges over Penn tags, moved where its Brown tagger puts them."""
    tagged = [("two", "CD"), ("red", "JJ"), ("cars", "NNS"), ("and", "CC"), ("many", "JJ"), ("people", "NNS"),
              ("near", "IN"), ("the", "DT"), ("striped", "JJ"), ("wall", "NN"), ("of", "IN"), ("a", "DT"),
              ("training", "NN"), ("room", "NN"), ("in", "IN"), ("new", "JJ"), ("york", "NNP"), ("city", "NN")]
    assert fast_np_phrases(tagged) == ["red cars", "new york city"]
    assert brown_tag("many", "JJ") == "AP" and brown_tag("striped", "JJ") == "VBN"
    assert brown_tag("training", "NN") == "VBG" and brown_tag("Aerial", "JJ") == "NNP"
    assert brown_tag("jumps", "VBZ") == "NN" and brown_tag("is", "VBZ") == "VBZ"
    assert fast_np_phrases([("Aerial", "JJ"), ("view", "NN")]) == ["aerial"]  # an unseen capital: a name
    assert fast_np_phrases([("big", "JJ"), ("old", "JJ"), ("dog", "NN")]) == ["big old dog"]


def test_locate_maps_phrase_text_to_caption_spans():
    caption = "A woman's Red Dress, a red dress and a woman"
    assert locate(caption, "woman 's red dress") == {"text": "woman 's red dress", "start": 2, "end": 19}
    spans, missing = locate_all(caption, ["red dress", "red dress", "woman", "blue hat"])
    assert [(s["start"], s["end"]) for s in spans] == [(10, 19), (23, 32), (39, 44)]  # successive occurrences
    assert missing == 1
    assert locate("a woman", "man") is None  # never inside a longer word
    assert locate("the grass.", "grass") == {"text": "grass", "start": 4, "end": 9}


def test_unicode_offsets_are_characters(parser):
    caption = "Café owner pours a crème brûlée"
    [phrases] = parser.parse([caption])
    assert phrases["nouns"]
    for span in phrases["nouns"]:
        assert caption[span["start"]:span["end"]].casefold() == span["text"].casefold()


def test_deterministic(parser):
    captions = ["A man rides a red bicycle down the street", "Two women are cooking pasta in a kitchen"]
    assert parser.parse(captions) == parser.parse(list(reversed(captions)))[::-1]
