"""`mcq-ds ablation`: both arms through the real engine and evaluation on the demo shards, a few steps each."""
import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from mcq_ds.bench import ablation
from mcq_ds.cli import main


@pytest.fixture(scope="module")
def shards(demo_shards, tmp_path_factory):
    """The layout launch/demo.sh writes: OUT/shards/{cc3m, webvid, msrvtt-test}."""
    root = tmp_path_factory.mktemp("ablation") / "shards"
    root.mkdir()
    for name, source in (("cc3m", "cc3m"), ("webvid", "webvid"), ("msrvtt-test", "msrvtt")):
        (root / name).symlink_to(demo_shards[source])
    return root


def test_both_arms_train_on_the_same_steps_and_land_in_one_experiment(shards, capsys):
    # tiny: 2 text layers, 4 video blocks, no pre-trained weights to keep
    flags = "--preset tiny --frozen-text-layers 0 --frozen-video-blocks 0 --global-batch 8 --max-steps 2 --log-every 1"
    assert main(["ablation", str(shards), "--seeds", "0", "--train-flags", flags]) == 0
    out = shards.parent / "ablation"
    printed = capsys.readouterr().out
    assert "| MCQ (`--mcq-weight 1`) |" in printed and "| dual encoder alone (`--mcq-weight 0`) |" in printed
    results = json.loads((out / "results.json").read_text())["results"]
    for arm, weight in (("mcq", 1.0), ("baseline", 0.0)):
        final = results[arm]["0"]
        assert 0 <= final["metrics"]["t2v"]["R@1"] <= 100 and "accuracy" in final["motion_probe"]
        for stage in ("1f-noun", "4f-noun", "4f-verb"):
            config = json.loads((out / f"{arm}-seed0" / stage / "config.json").read_text())
            assert config["mcq_weight"] == weight and config["seed"] == 0 and config["max_steps"] == 2
    assert 0 <= results["mcq"]["0"]["answers"]["mcq_accuracy_verb"] <= 100  # the verb stage's answers
    # told_apart pairs query i with video i: the R@1 of the saved embeddings under that pairing is the evaluation's
    saved = out / "mcq-seed0" / "4f-verb" / "model" / "eval" / "ablation-embeddings"
    scores = np.load(saved / "text_embeddings.npy") @ np.load(saved / "video_embeddings.npy").T
    first = (scores > np.diag(scores)[:, None]).sum(1) == 0
    assert 100 * first.mean() == pytest.approx(results["mcq"]["0"]["metrics"]["t2v"]["R@1"])
    parts = results["mcq"]["0"]["parts"]
    assert 0 < parts["colour_background_r1"] <= 100 and 0 <= parts["shape_pairs"] <= 100
    assert "answers" not in results["baseline"]["0"]

    client = MlflowClient(f"sqlite:///{out.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("mcq-ds-ablation").experiment_id])
    names = {r.info.run_name for r in runs}
    assert {f"{arm} seed0 demo-4f-verb" for arm in ("mcq", "baseline")} <= names
    assert {f"{arm} seed0 eval" for arm in ("mcq", "baseline")} <= names  # both arms' evaluations

    # a rerun finds every stage and evaluation done and only reprints the table
    assert main(["ablation", str(shards), "--seeds", "0", "--train-flags", flags]) == 0
    assert len(client.search_runs([client.get_experiment_by_name("mcq-ds-ablation").experiment_id])) == len(runs)


def test_table_gives_the_spread_over_seeds_and_of_the_paired_difference():
    def result(r1, probe):
        return {"metrics": {"t2v": {"R@1": r1, "R@5": 2 * r1, "R@10": 3 * r1}}, "protocol": {"videos": 100},
                "motion_probe": {"accuracy": probe, "chance": 100 / 6},
                "parts": {"shape_pairs": probe / 2, "wrong_top1_same_colour_background": 100 - r1,
                          "colour_background_r1": 28.0}}

    results = {"mcq": {0: result(30, 60), 1: result(34, 50)}, "baseline": {0: result(20, 20), 1: result(22, 30)}}
    for seed, accuracy in ((0, 40.0), (1, 50.0)):
        results["mcq"][seed]["answers"] = {"mcq_accuracy_verb": accuracy, "mcq_chance_verb": 20.0}
    rows = ablation.table(results).splitlines()
    assert rows[2] == ("| MCQ (`--mcq-weight 1`) | 32.0 ± 2.8 | 64.0 ± 5.7 | 96.0 ± 8.5 | 55.0 ± 7.1 | 27.5 ± 3.5 "
                       "| 68.0 ± 2.8 | 45.0 ± 7.1 (20.0 ± 0.0) |")
    assert rows[3].startswith("| dual encoder alone (`--mcq-weight 0`) | 21.0 ± 1.4 |") and rows[3].endswith("| — |")
    assert rows[4].startswith("| MCQ − baseline, per seed | 11.0 ± 1.4 |")
    assert "Motion probe chance: 16.7%" in rows[-1] and "colour and background apart: 28.0%" in rows[-1]


def _saved(folder, captions, text, video):
    from mcq_ds.eval.extract import write_embeddings

    write_embeddings(folder, "text", np.asarray(text, np.float32), captions)
    write_embeddings(folder, "video", np.asarray(video, np.float32), [f"video{i}" for i in range(len(video))])
    return folder


def test_told_apart_separates_what_a_ranking_knows(tmp_path):
    from mcq_shards.synth import VIDEO_TEMPLATES, _caption

    parts = [("red", "circle", "stripes"), ("red", "square", "stripes"), ("red", "star", "stripes"),
             ("blue", "circle", "dots")]
    captions = [_caption(VIDEO_TEMPLATES[i % 3], c, s, b, "is resting") for i, (c, s, b) in enumerate(parts)]
    group = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], float)  # colour and background only
    shape = np.eye(4)[[0, 1, 2, 0]]
    # knows colour and background only: every same-group video ties with the query's own
    blind = ablation.told_apart(_saved(tmp_path / "blind", captions, group, group))
    assert blind == {"colour_background_r1": pytest.approx(100 * (3 * 1 / 3 + 1) / 4),
                     "wrong_top1_same_colour_background": 0.0, "shape_pairs": 50.0}
    # knows the shapes as well
    sighted = np.hstack([group, shape])
    assert ablation.told_apart(_saved(tmp_path / "sighted", captions, sighted, sighted))["shape_pairs"] == 100.0
    # the red circle's query prefers the red square: a wrong first video of the query's colour and background
    text = sighted.copy()
    text[0] = sighted[1]
    confused = ablation.told_apart(_saved(tmp_path / "confused", captions, text, sighted))
    assert confused["wrong_top1_same_colour_background"] == 100.0
    # of the 6 (query, other red shape) pairs the red circle's query loses one (the square) and ties one (the star)
    assert confused["shape_pairs"] == pytest.approx(100 * 4.5 / 6)


def test_told_apart_names_a_caption_not_in_the_demo_words(tmp_path):
    folder = _saved(tmp_path, ["a man is cooking"], [[1.0]], [[1.0]])
    with pytest.raises(ValueError, match="'a man is cooking' does not name a colour, shape and background"):
        ablation.told_apart(folder)


def test_missing_shards_are_named(tmp_path, capsys):
    assert main(["ablation", str(tmp_path)]) == 2
    assert "lacks cc3m, webvid, msrvtt-test" in capsys.readouterr().err


def test_verb_answers_are_averaged_over_the_last_third_of_the_logged_steps(tmp_path):
    events = [{"event": "params", "params": {}}]
    events += [{"event": "metrics", "step": 10 * i, "metrics": {"mcq_accuracy_verb": a, "mcq_chance_verb": 20.0 + i}}
               for i, a in enumerate([10, 90, 20, 30, 40, 50], 1)]
    events.append({"event": "metrics", "step": 70, "metrics": {"loss": 1.0}})  # a metric line without answers
    (tmp_path / "tracking.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert ablation._late_answer_accuracy(tmp_path) == {"mcq_accuracy_verb": 45.0, "mcq_chance_verb": 25.5}
