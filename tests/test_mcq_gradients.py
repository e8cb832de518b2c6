"""Which parameters each term of the training loss trains, on a real batch of the demo shards.

The MCQ term L(answer, bridge) must reach the video tower below its last block (the bridge reads every block's
input), the text tower on two paths (answers through every layer and the text head; questions through the layers
whose hidden states feed the bridge) and the whole BridgeFormer, and nothing else; the dual-encoder term
L(text, video) must not reach the bridge.
"""
import pytest
import torch

from mcq_ds.data.loader import LoaderConfig, ShardLoader
from mcq_ds.loss import info_nce
from mcq_ds.model import create_model, create_tokenizer, preset


@pytest.fixture(scope="module")
def model_and_batch(demo_shards):
    torch.manual_seed(0)
    cfg = preset("tiny")
    model = create_model(cfg)
    tokenizer = create_tokenizer(cfg)
    loader = ShardLoader(LoaderConfig(shards=demo_shards["webvid"], source="webvid", tokenizer=tokenizer,
                                      num_frames=4, img_size=cfg.video.img_size, batch_size=6, workers=0,
                                      question_type="verb", hflip=False))
    batch = next(iter(loader)).to("cpu")  # uint8 frames, normalised as the engine does
    assert "verb" in batch.kinds  # the verb stage's questions: the phrase asked about is the caption's motion
    return model, batch


def trained_by(model, loss) -> set[str]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_the_mcq_term_trains_the_video_tower_the_text_tower_and_the_bridge(model_and_batch):
    model, batch = model_and_batch
    model.train()
    emb = model(batch.video, batch.text, batch.question, batch.answer)
    names = {name for name, _ in model.named_parameters()}
    last = f"video_model.blocks.{model.cfg.video.depth - 1}."
    # the video embedding's own path: the last block's output, the final norm and the head feed only the [CLS]
    not_mcq = {n for n in names if n.startswith((last, "video_model.norm.", "video_proj."))}
    assert len(not_mcq) > 4 and trained_by(model, info_nce(emb.answer, emb.bridge)) == names - not_mcq

    # the question path alone (answers held fixed): embeddings and the text layers whose states the bridge reads,
    # layer ⌊l·T/V⌋ − 1 for bridge block l (T = 2 text layers, V = 4 blocks: the states 0 and 1)
    emb = model(batch.video, batch.text, batch.question, batch.answer)
    question_path = {n for n in trained_by(model, info_nce(emb.answer.detach(), emb.bridge))
                     if n.startswith("text_model.")}
    text_layers = model.cfg.text.arch["n_layers"]
    fed = {layer * text_layers // model.cfg.video.depth for layer in range(model.cfg.video.depth)}
    assert fed == {0, 1}
    expected = {n for n in names if n.startswith("text_model.") and ("embeddings." in n or ".layer.0." in n)}
    assert any(".layer.0." in n for n in expected) and any("embeddings." in n for n in expected)
    assert question_path == expected


def test_the_dual_encoder_term_does_not_train_the_bridge(model_and_batch):
    model, batch = model_and_batch
    emb = model(batch.video, batch.text, batch.question, batch.answer)
    trained = trained_by(model, info_nce(emb.text, emb.video))
    assert trained and not {n for n in trained if n.startswith(("bridge_model.", "bridge_proj."))}
