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
def tiny_model(tiny_model_folder):
    return tiny_model_folder


def test_it_reports_every_embedding_of_the_verb_questions(tiny_model, demo_shards, capsys):
    assert main(["separability", str(tiny_model), str(demo_shards["webvid"]), "--samples", "48",
                 "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "48 verb questions of 6 answers" in out and "is swaying" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert set(rows) == {"answer", "bridge", "video", "text"}
    # the answer is a function of its phrase alone: a linear probe names it whatever the weights
    assert rows["answer"][0] == "100.0%"


def test_fitting_the_video_tower_trains_a_copy_and_scores_each_quarter(tiny_model, demo_shards):
    from mcq_ds.bench.separability import fit_video, training_batches
    from mcq_ds.model.loading import load_pretrained
    from mcq_shards.synth import MOTIONS

    torch.manual_seed(0)
    model, tokenizer = load_pretrained(tiny_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = training_batches(model, tokenizer, demo_shards["webvid"], "verb", 4, 8, seed=0)
    report = fit_video(model, batches, tokenizer, list(MOTIONS.values()), "verb", 8, 1e-3)
    assert [step for step, _, _ in report] == [2, 4, 6, 8]
    # scored on samples of the six answers (a 16-sample quarter's most common answer is at least 1/6 of it)
    assert all(0 <= accuracy <= 100 and 100 / 6 <= chance <= 100 for _, accuracy, chance in report)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model itself is untouched


def test_grown_temporal_attention_starts_as_the_same_video_function(tiny_model):
    from mcq_ds.bench.separability import with_temporal_attention
    from mcq_ds.model.loading import load_pretrained

    model, _ = load_pretrained(tiny_model)
    grown = with_temporal_attention(model)
    assert grown.cfg.video.temporal_attention and not model.cfg.video.temporal_attention
    assert any(".timeattn." in k for k in grown.state_dict())
    video = torch.randn(2, 4, 3, model.cfg.video.img_size, model.cfg.video.img_size)
    with torch.no_grad():
        assert torch.allclose(grown.eval().encode_video(video), model.eval().encode_video(video), atol=1e-6)
        # and it is order-aware once its temporal attention moves off zero
        for name, p in grown.named_parameters():
            if ".timeattn.qkv." in name or "temporal_embed" in name:
                p.add_(0.1 * torch.randn_like(p))
        assert not torch.allclose(grown.encode_video(video), grown.encode_video(video.flip(1)), atol=1e-4)


def test_a_model_without_its_bridge_is_refused(tmp_path, demo_shards):
    cfg = preset("tiny")
    cfg.bridge = False
    save_pretrained(create_model(cfg), create_tokenizer(cfg), tmp_path / "model")
    with pytest.raises(SystemExit, match="has no BridgeFormer"):
        main(["separability", str(tmp_path / "model"), str(demo_shards["webvid"])])
