"""Retrieval metrics against similarity matrices worked out by hand, ties included (SPEC §5.2)."""
import numpy as np
import pytest

from mcq_ds.eval.metrics import (cosine_similarity, format_metrics, ranks_to_metrics, retrieval_metrics, t2v_ranks,
                                 v2t_ranks)


def test_one_caption_per_video_by_hand():
    # rows: texts, columns: videos; text i belongs to video i
    sims = np.array([[0.9, 0.1, 0.2, 0.3],    # its video is the best: rank 0
                     [0.5, 0.4, 0.6, 0.1],    # 0.5 and 0.6 beat 0.4: rank 2
                     [0.7, 0.7, 0.7, 0.7],    # all tied: optimistic rank 0
                     [0.2, 0.8, 0.8, 0.3]],   # 0.8, 0.8 beat 0.3: rank 2
                    dtype=np.float32)
    assert t2v_ranks(sims, np.arange(4)).tolist() == [0, 2, 0, 2]
    # video→text reads the columns. Video 0: captions score 0.9 0.5 0.7 0.2 -> caption 0 first: rank 0.
    # Video 1: 0.1 0.4 0.7 0.8, its caption 0.4 has 0.7 and 0.8 above: rank 2.
    # Video 2: 0.2 0.6 0.7 0.8, its caption 0.7 has 0.8 above: rank 1.
    # Video 3: 0.3 0.1 0.7 0.3, its caption 0.3 has 0.7 above and ties caption 0: positions 1 and 2 -> 1.5.
    assert v2t_ranks(sims, np.arange(4)).tolist() == [0, 2, 1, 1.5]
    m = retrieval_metrics(sims, np.arange(4))
    assert m["t2v"]["R@1"] == 50.0 and m["t2v"]["R@5"] == 100.0
    assert m["t2v"]["MedR"] == 2.0  # median of 0-based ranks (0, 0, 2, 2) is 1, reported 1-based
    assert m["t2v"]["MeanR"] == 2.0
    assert m["v2t"]["R@1"] == 25.0  # a tie-averaged rank of 1.5 is not < 1
    assert m["v2t"]["R@5"] == 100.0
    assert m["v2t"]["MedR"] == pytest.approx(1 + 1.25)  # median of (0, 1, 1.5, 2)
    assert m["v2t"]["MeanR"] == pytest.approx(1 + 4.5 / 4)


def test_several_captions_per_video_take_the_best_caption():
    # 3 videos, 2 captions each in consecutive blocks (the original's layout): texts 0,1 -> video 0, ...
    sims = np.array([[0.1, 0.9, 0.0],
                     [0.8, 0.2, 0.1],
                     [0.3, 0.5, 0.4],
                     [0.6, 0.6, 0.6],
                     [0.2, 0.3, 0.7],
                     [0.9, 0.1, 0.2]], dtype=np.float32)
    owner = np.array([0, 0, 1, 1, 2, 2])
    assert t2v_ranks(sims, owner).tolist() == [1, 0, 0, 0, 0, 1]  # text 5: only 0.9 beats its 0.2
    # Video 0 column: 0.1 0.8 0.3 0.6 0.2 0.9. Caption 0 (0.1) is last: rank 5; caption 1 (0.8) has 0.9 above:
    # rank 1 -> the video's rank is 1.
    # Video 1 column: 0.9 0.2 0.5 0.6 0.3 0.1. Caption 2 (0.5): 0.9, 0.6 above: 2; caption 3 (0.6): 1 -> 1.
    # Video 2 column: 0.0 0.1 0.4 0.6 0.7 0.2. Caption 4 (0.7): 0; caption 5 (0.2): 3 -> 0.
    assert v2t_ranks(sims, owner).tolist() == [1, 1, 0]
    # The same queries in another order give the same numbers: nothing assumes blocks.
    order = np.array([5, 2, 0, 4, 1, 3])
    assert retrieval_metrics(sims[order], owner[order]) == retrieval_metrics(sims, owner)


def test_tied_captions_of_one_video_are_averaged_before_the_minimum():
    # One video column where its two captions tie with two others at the top.
    sims = np.array([[0.5, 0.0], [0.5, 0.1], [0.5, 0.9], [0.5, 0.8]], dtype=np.float32)
    owner = np.array([0, 0, 1, 1])
    # Video 0: four captions all at 0.5, positions 0..3 -> every caption's rank is 1.5.
    assert v2t_ranks(sims, owner).tolist() == [1.5, 0]
    # Text 0..3 against videos: caption 0 ties nothing above 0.5 -> 0; caption 2: 0.9 > 0.5 -> 0; caption 3 -> 0
    assert t2v_ranks(sims, owner).tolist() == [0, 0, 0, 0]


def _original_recalls(ranks):
    """The original's `cols2metrics`: R@1 is `cols == 0`, the others `cols < K`."""
    ranks = np.asarray(ranks)
    return {"R@1": 100 * np.mean(ranks == 0), "R@5": 100 * np.mean(ranks < 5), "R@10": 100 * np.mean(ranks < 10),
            "R@50": 100 * np.mean(ranks < 50)}


def test_duplicate_captions_tie_at_the_top_and_count_for_r5_but_not_r1():
    # Every caption twice, as when a data set lists the same sentence for a video two times: each video's two
    # identical captions score the same, so the best one sits at tie-averaged rank 0.5 even when it is on top.
    rng = np.random.default_rng(0)
    videos = 6
    sims = rng.random((videos, videos)).astype(np.float32)
    sims[np.arange(videos), np.arange(videos)] += 1  # every video's own caption is the best
    doubled = np.repeat(sims, 2, axis=0)
    owner = np.repeat(np.arange(videos), 2)
    v2t = v2t_ranks(doubled, owner)
    assert v2t.tolist() == [0.5] * videos
    m = retrieval_metrics(doubled, owner)
    assert m["v2t"]["R@1"] == 0.0 and m["v2t"]["R@5"] == 100.0  # the original: 0.0, not 100
    assert {k: m["v2t"][k] for k in _original_recalls(v2t)} == _original_recalls(_reference(doubled, owner)[1])
    assert m["v2t"]["MedR"] == 1.5 and m["v2t"]["MeanR"] == 1.5  # tie averaging kept
    assert m["t2v"]["R@1"] == 100.0  # text->video: optimistic ties, untouched
    # A tie-averaged 4.5 is an R@5 hit, as in the original.
    assert ranks_to_metrics(np.array([4.5]))["R@5"] == 100.0


def _reference(sims, owner):
    """Literal loops over sorted rows, the way the original phrases it (positions of equal scores)."""
    t2v = []
    for i, row in enumerate(sims):
        order = np.sort(-row)
        t2v.append(np.flatnonzero(order == -row[owner[i]])[0])
    v2t = []
    for v in range(sims.shape[1]):
        column = -sims[:, v]
        order = np.sort(column)
        v2t.append(min(np.flatnonzero(order == column[j]).mean() for j in np.flatnonzero(owner == v)))
    return np.array(t2v, float), np.array(v2t)


@pytest.mark.parametrize("seed", range(5))
def test_vectorised_ranks_equal_the_sorted_position_definition(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    videos, per_video = 37, 3
    sims = rng.integers(0, 6, size=(videos * per_video, videos)).astype(np.float32) / 5  # many ties
    owner = np.repeat(np.arange(videos), per_video)
    monkeypatch.setattr("mcq_ds.eval.metrics._CHUNK", 50)  # force many chunks
    t2v, v2t = _reference(sims, owner)
    assert np.array_equal(t2v_ranks(sims, owner), t2v)
    assert np.array_equal(v2t_ranks(sims, owner), v2t)


def test_metrics_from_ranks_and_report_line():
    m = ranks_to_metrics(np.array([0, 4, 9, 49, 50, 100]))
    assert m["R@1"] == pytest.approx(100 / 6) and m["R@5"] == pytest.approx(200 / 6)
    assert m["R@10"] == 50.0 and m["R@50"] == pytest.approx(400 / 6)
    assert m["MedR"] == 30.0 and m["MeanR"] == pytest.approx(1 + 212 / 6)
    assert m["geometric_mean_R1-R5-R10"] == pytest.approx((100 / 6 * 200 / 6 * 50) ** (1 / 3))
    assert ranks_to_metrics(np.array([3.0]))["geometric_mean_R1-R5-R10"] == 0.0
    line = format_metrics({"t2v": m, "v2t": m}).splitlines()[0]
    assert line.startswith("text->video: R@1 16.7  R@5 33.3  R@10 50.0  R@50 66.7  MedR 30")


def test_cosine_clamps_zero_vectors_and_bad_inputs_are_refused():
    sims = cosine_similarity(np.array([[3.0, 4.0], [0.0, 0.0]]), np.array([[1.0, 0.0]]))
    assert sims.dtype == np.float32 and sims[:, 0].tolist() == pytest.approx([0.6, 0.0])
    with pytest.raises(ValueError, match="no caption"):
        v2t_ranks(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="one video per text row"):
        t2v_ranks(np.zeros((2, 3)), np.array([0]))
    with pytest.raises(ValueError, match="NaN"):
        t2v_ranks(np.full((1, 1), np.nan), np.array([0]))
