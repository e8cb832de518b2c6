"""`mcq-ds eval MODEL msrvtt=… msvd=… lsmdc=… didemo=…`: the four benchmark protocols on the demo data's layouts
(real encoded videos through the real converters), one JSON per set, the table beside the paper, one MLflow run."""
import json
import tarfile

import pytest
import torch

from mcq_ds.cli import main
from mcq_ds.eval.benchmarks import PAPER, comparison_table, family_of, setting
from mcq_ds.eval.extract import read_ids
from mcq_ds.model import create_model, preset
from mcq_shards.manifest import read_manifest
from test_eval_extract import one_thread  # noqa: F401 - one intra-op thread for tiny models on a shared CPU

FAST = ["--workers", "0", "--quiet", "--batch-size", "4"]


@pytest.fixture(scope="module")
def model(tiny_model_folder):
    return tiny_model_folder


def stored(shards) -> list[dict]:
    found = []
    for shard in read_manifest(shards).shards:
        with tarfile.open(shard.path) as tar:
            found += [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    return found


def test_four_benchmarks_in_one_command(benchmark_shards, model, tmp_path, capsys):
    sets = [f"{name}={benchmark_shards[name]}" for name in ("msrvtt", "msvd", "lsmdc", "didemo")]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["eval", str(model), *sets, "--save-embeddings", str(tmp_path / "emb"), "--mlflow-uri", uri,
                 *FAST]) == 0
    printed = capsys.readouterr().out
    results = {name: json.loads((model / "eval" / f"{name}-4f.json").read_text())
               for name in ("msrvtt", "msvd", "lsmdc", "didemo")}
    samples = {name: stored(benchmark_shards[name]) for name in results}
    # the protocols: one caption per video, every MSVD caption a query, one paragraph per DiDeMo video
    assert results["msrvtt"]["protocol"]["queries"] == results["msrvtt"]["protocol"]["videos"] == 8
    assert results["msvd"]["protocol"]["queries"] == sum(len(s["captions"]) for s in samples["msvd"]) > 6
    assert read_ids(tmp_path / "emb" / "msvd" / "text_ids.txt") == [c for s in samples["msvd"] for c in s["captions"]]
    assert read_ids(tmp_path / "emb" / "didemo" / "text_ids.txt") == [" ".join(s["sentences"])
                                                                      for s in samples["didemo"]]
    assert results["lsmdc"]["protocol"]["queries"] == 6 and results["didemo"]["protocol"]["queries"] == 6
    assert all(r["protocol"]["splits"] == ["test"] for r in results.values())
    # the table: ours beside MCQ's published zero-shot numbers, the difference, and the sets marked as partial
    table = (model / "eval" / "benchmarks-4f.md").read_text()
    assert table in printed
    msvd_r1 = results["msvd"]["metrics"]["t2v"]["R@1"]
    row = next(line for line in table.splitlines() if line.startswith("| MSVD |"))
    assert "| ZS | 6 † |" in row and "43.6 / 74.9 / 84.9 / 2" in row and f"{msvd_r1 - 43.6:+.1f}" in row
    assert "† MSVD: 6 videos of the published 670" in table
    # one MLflow run holds every set
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("mcq-ds-eval").experiment_id])
    for name, res in results.items():
        assert run.data.metrics[f"{name}/t2v/R1"] == pytest.approx(res["metrics"]["t2v"]["R@1"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"benchmarks-4f.md", "msvd-4f.json"}


def test_the_one_set_form_keeps_its_results_and_takes_a_benchmarks_protocol(benchmark_shards, model, tmp_path):
    assert main(["eval", str(model), str(benchmark_shards["msrvtt"]), "-o", str(tmp_path / "plain.json"),
                 "--mlflow-uri", "none", *FAST]) == 0
    assert main(["eval", str(model), f"msrvtt={benchmark_shards['msrvtt']}", "-o", str(tmp_path / "named"),
                 "--mlflow-uri", "none", *FAST]) == 0
    plain = json.loads((tmp_path / "plain.json").read_text())
    named = json.loads((tmp_path / "named" / "msrvtt-4f.json").read_text())
    assert plain["metrics"] == named["metrics"]
    assert main(["eval", str(model), str(benchmark_shards["msvd"]), "-o", str(tmp_path / "msvd.json"),
                 "--mlflow-uri", "none", *FAST]) == 0  # shards of the MSVD converter: every caption a query
    msvd = json.loads((tmp_path / "msvd.json").read_text())
    assert msvd["protocol"]["queries"] == sum(len(s["captions"]) for s in stored(benchmark_shards["msvd"]))


def test_a_set_given_another_benchmarks_shards_is_refused(benchmark_shards, model, capsys):
    assert main(["eval", str(model), f"msvd={benchmark_shards['lsmdc']}", "--mlflow-uri", "none", *FAST]) == 2
    assert "converted by `mcq-shards lsmdc`, not `mcq-shards msvd`" in capsys.readouterr().err
    assert main(["eval", str(model), str(benchmark_shards["msvd"]), str(benchmark_shards["lsmdc"]), *FAST]) == 2
    assert "give each as SET=SHARDS" in capsys.readouterr().err


def fake(videos: int, r1: float) -> dict:
    t2v = {"R@1": r1, "R@5": 50.0, "R@10": 60.0, "MedR": 5.0, "MeanR": 20.0}
    return {"metrics": {"t2v": t2v}, "protocol": {"videos": videos, "queries": videos}, "data": {"rejects": 0},
            "skipped": {"count": 0}}


def test_table_settings_and_families():
    table = comparison_table({"msrvtt": fake(1000, 40.0), "msvd": fake(670, 50.0)}, "mcq", tuned_on="msrvtt")
    msrvtt = next(line for line in table.splitlines() if line.startswith("| MSR-VTT"))
    assert "| FT | 1,000 |" in msrvtt and "37.6 / 64.8 / 75.1 / 3" in msrvtt and "+2.4 / -14.8 / -15.1" in msrvtt
    msvd = next(line for line in table.splitlines() if line.startswith("| MSVD"))
    assert "fine-tuned on msrvtt" in msvd and "not in the paper" in msvd and "†" not in table
    assert setting("lsmdc", None) == "zs" and ("mcq-clip", "didemo", "zs") not in PAPER
    didemo = comparison_table({"didemo": fake(20, 30.0)}, "mcq", tuned_on=None)
    assert "| 20 † |" in didemo and "where the papers evaluate about 1,000" in didemo
    assert "†" not in comparison_table({"didemo": fake(1003, 30.0)}, "mcq", tuned_on=None)
    clip = comparison_table({"lsmdc": fake(1000, 20.0)}, "mcq-clip", tuned_on=None)
    assert "15.5 / 30.7 / 38.7 / 22 / 97.9" in clip  # CLIP-initialised MCQ's MeanR is published
    assert family_of(create_model(preset("clip-tiny"))) == "mcq-clip"
    cfg = preset("tiny")
    assert family_of(create_model(cfg)) == "mcq"
    cfg.video.temporal_attention = True
    assert family_of(create_model(cfg)) == "miles"
