"""The MCQ diagnostic `mcq-ds separability`: which embeddings tell the answers of a question kind apart."""
import pytest
import torch

from mcq_ds.bench.separability import separability
from mcq_ds.cli import main
from mcq_ds.model import create_model, create_tokenizer, preset
from mcq_ds.model.loading import save_pretrained


def test_a_collapsed_but_informative_embedding_is_found_informative_and_collapsed():
    torch.manual_seed(0)
    y = torch.arange(300) % 5
    signal = torch.nn.functional.one_hot(y, 5).float() @ torch.randn(5, 64)
    collapsed = torch.ones(300, 64) + 1e-3 * signal + 1e-5 * torch.randn(300, 64)
    s = separability(collapsed, y)
    assert s.probe_accuracy > 95 and s.spread_cosine > 0.999 and s.centroid_cosine > 0.999
    assert s.majority == pytest.approx(20, abs=1)


def test_an_embedding_without_the_answer_is_at_chance():
    torch.manual_seed(0)
    y = torch.arange(300) % 5
    s = separability(torch.randn(300, 64), y)
    assert s.probe_accuracy < 35 and s.spread_cosine < 0.2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = preset("tiny")
    folder = tmp_path_factory.mktemp("separability") / "model"
    save_pretrained(create_model(cfg), create_tokenizer(cfg), folder)
    return folder


def test_it_reports_every_embedding_of_the_verb_questions(tiny_model, demo_shards, capsys):
    assert main(["separability", str(tiny_model), str(demo_shards["webvid"]), "--samples", "48",
                 "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "48 verb questions of 6 answers" in out and "is swaying" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert set(rows) == {"answer", "bridge", "video", "text"}
    # the answer is a function of its phrase alone: a linear probe names it whatever the weights
    assert rows["answer"][0] == "100.0%"


def test_a_model_without_its_bridge_is_refused(tmp_path, demo_shards):
    cfg = preset("tiny")
    cfg.bridge = False
    save_pretrained(create_model(cfg), create_tokenizer(cfg), tmp_path / "model")
    with pytest.raises(SystemExit, match="has no BridgeFormer"):
        main(["separability", str(tmp_path / "model"), str(demo_shards["webvid"])])
