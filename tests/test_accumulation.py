"""Negatives from the whole global batch under gradient accumulation: however 32 samples are split into ranks and
micro-batches, one optimizer step of the real DeepSpeed engine (gloo ranks, fp32, CPU) sees the same loss and the
same gradients, for both MCQ terms and for fine-tuning's text-video term alone (no BridgeFormer, no questions); and
the second forward of each micro-batch replays its dropout masks."""
import copy
import dataclasses
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mcq_ds.data.batch import Batch, Tokens

GLOBAL = 32
FRAMES = 1  # one frame keeps the step cheap; the split is what is tested


def samples() -> list[Batch]:
    """32 one-sample batches with varied text lengths (padding differs between micro-batches)."""
    g = torch.Generator().manual_seed(7)
    video = torch.randn(GLOBAL, FRAMES, 3, 64, 64, generator=g)
    out = []
    for i in range(GLOBAL):
        def tokens(length: int) -> Tokens:
            ids = torch.randint(1000, 2000, (1, length), generator=g)
            ids[0, 0], ids[0, -1] = 101, 102
            return Tokens(ids, torch.ones(1, length, dtype=torch.long))
        out.append(Batch(video[i:i + 1], tokens(6 + i % 5), tokens(7 + i % 4), tokens(4 + i % 3), [f"s{i}"],
                         ["noun"], "webvid"))
    return out


def collate(parts: list[Batch]) -> Batch:
    def pad(tokens: list[Tokens]) -> Tokens:
        length = max(t.ids.shape[1] for t in tokens)
        ids = torch.zeros(len(tokens), length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, t in enumerate(tokens):
            ids[row, :t.ids.shape[1]], mask[row, :t.ids.shape[1]] = t.ids[0], t.mask[0]
        return Tokens(ids, mask)
    return Batch(torch.cat([p.video for p in parts]), pad([p.text for p in parts]), pad([p.question for p in parts]),
                 pad([p.answer for p in parts]), [k for p in parts for k in p.keys], ["noun"] * len(parts), "webvid")


def make_model(dropout: float, bridge: bool = True):
    from mcq_ds.model.presets import preset
    from mcq_ds.model import create_model

    cfg = preset("tiny")
    cfg.text.arch.update(dropout=dropout, attention_dropout=dropout)
    cfg.bridge = bridge
    torch.manual_seed(0)
    return create_model(cfg)


def one_step(model, rank: int, world: int, accumulation: int, negatives: str = "global", questions: bool = True):
    """One optimizer step of the real engine (SGD, lr 1: parameters move by exactly −gradient) over this rank's
    micro-batches (without questions: fine-tuning's batches); returns the global loss terms and the gradient."""
    import deepspeed

    from mcq_ds.engine.config import TrainConfig
    from mcq_ds.engine.train import deepspeed_config, train_step
    from mcq_ds.loss import MCQLoss

    micro = GLOBAL // (world * accumulation)
    cfg = TrainConfig(stage="demo-4f-noun", data={"webvid": "unused"}, global_batch=GLOBAL, micro_batch=micro,
                      ds_config="cpu_fp32.json")
    cfg.stage_defaults()
    ds = {**deepspeed_config(cfg, world), "zero_allow_untested_optimizer": True}  # ZeRO-1 around plain SGD
    before = [p.detach().clone() for p in model.parameters()]
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                                           config=ds)
    mine = samples()[rank * micro * accumulation:(rank + 1) * micro * accumulation]
    batches = [collate(mine[k * micro:(k + 1) * micro]) for k in range(accumulation)]
    if not questions:
        batches = [dataclasses.replace(b, question=None, answer=None) for b in batches]
    torch.manual_seed(123)  # dropout
    terms = torch.stack(train_step(engine, MCQLoss(), batches, negatives == "global"))
    dist.all_reduce(terms)
    grads = [b - p.detach() for b, p in zip(before, engine.module.parameters())]
    return terms / world, grads


def reference_gradient(model, accumulation: int):
    """The whole batch as one graph: the micro-batches' forwards in order from the same RNG state, one loss."""
    from mcq_ds.loss import MCQLoss

    micro = GLOBAL // accumulation
    all_samples = samples()
    torch.manual_seed(123)
    parts = [model(b.video, b.text, b.question, b.answer)
             for b in (collate(all_samples[k * micro:(k + 1) * micro]) for k in range(accumulation))]
    out = MCQLoss()(*(torch.cat(p) for p in zip(*parts)))
    out.loss.backward()
    return torch.stack([t.detach() for t in out]), [p.grad.clone() for p in model.parameters()]


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        results = {}
        if world == 2:
            results["2x2x8"] = one_step(make_model(0.0), rank, 2, 2)
        else:
            results["1x4x8"] = one_step(make_model(0.0), 0, 1, 4)
            results["1x1x32"] = one_step(make_model(0.0), 0, 1, 1)
            results["1x4x8 micro"] = one_step(make_model(0.0), 0, 1, 4, "micro")
            results["1x4x8 ft"] = one_step(make_model(0.0, bridge=False), 0, 1, 4, questions=False)
            results["1x1x32 ft"] = one_step(make_model(0.0, bridge=False), 0, 1, 1, questions=False)
            model = make_model(0.1)
            results["reference dropout"] = reference_gradient(copy.deepcopy(model), 4)
            results["1x4x8 dropout"] = one_step(model, 0, 1, 4)
        torch.save(results, os.path.join(out_dir, f"world{world}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("accumulation")
    for world in (1, 2):
        mp.spawn(worker, args=(world, free_port(), str(out)), nprocs=world)
    found = torch.load(out / "world1-rank0.pt")
    found["2x2x8"] = torch.load(out / "world2-rank0.pt")["2x2x8"]
    rank1 = torch.load(out / "world2-rank1.pt")["2x2x8"]
    for a, b in zip(found["2x2x8"][1], rank1[1]):
        assert torch.equal(a, b)  # both ranks hold the same model after the step
    return found


def assert_same(got, expected):
    (terms, grads), (ref_terms, ref_grads) = got, expected
    torch.testing.assert_close(terms, ref_terms, rtol=1e-5, atol=1e-6)
    scale = max(g.abs().max() for g in ref_grads)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5 * scale)


@pytest.mark.parametrize("layout", ["1x4x8", "2x2x8"])
def test_any_split_gives_the_loss_and_gradients_of_one_batch(results, layout):
    assert_same(results[layout], results["1x1x32"])


def test_fine_tuning_steps_split_like_one_batch(results):
    assert_same(results["1x4x8 ft"], results["1x1x32 ft"])
    terms = results["1x1x32 ft"][0]
    assert terms[0] == terms[1] and terms[2] == 0  # the text-video term alone


def test_micro_batch_negatives_are_a_different_objective(results):
    terms, _ = results["1x4x8 micro"]
    assert not torch.allclose(terms, results["1x1x32"][0], rtol=1e-3)  # 8 negatives per sample instead of 32
    assert terms[0] < results["1x1x32"][0][0]  # fewer negatives, smaller loss


def test_dropout_masks_are_replayed(results):
    assert_same(results["1x4x8 dropout"], results["reference dropout"])
    assert not torch.allclose(results["1x4x8 dropout"][0], results["1x1x32"][0])  # dropout was on
