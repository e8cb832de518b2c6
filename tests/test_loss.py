"""The contrastive loss: its value by hand, and the distributed version against one process with
real gloo ranks."""

import math
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mcq_ds.loss import MCQLoss, answer_keys, info_nce, mcq_choices

WORLD = 2
BATCH = 8
KEYS = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])  # samples 1 and 3 have the same answer text


def hand_info_nce(tau: float) -> float:
    """L for a = [[1, 0], [0, 1]], b = [[2, 0], [1, 1]]: b's rows normalise to (1, 0) and
    (c, c) with c = 1/√2, so S = [[1, c], [0, c]]."""
    c = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(c / tau)))
    row1 = -math.log(math.exp(c / tau) / (math.exp(0) + math.exp(c / tau)))
    col0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0)))
    col1 = math.log(2)  # column [c, c]: both rows equally similar
    return (row0 + row1) / 2 + (col0 + col1) / 2


@pytest.mark.parametrize("tau", [1.0, 0.05])
def test_info_nce_by_hand(tau):
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert info_nce(a, b, tau).item() == pytest.approx(hand_info_nce(tau), rel=1e-12)


def test_default_temperature_is_0_05():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert info_nce(a, b).item() == pytest.approx(hand_info_nce(0.05), rel=1e-12)


def test_info_nce_symmetric_and_scale_free():
    a, b = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert info_nce(a, b).item() == pytest.approx(info_nce(b, a).item(), rel=1e-12)
    scale = torch.tensor([[3.0], [0.5], [7.0], [1.0], [2.0]], dtype=torch.float64)
    assert info_nce(a * scale, b).item() == pytest.approx(info_nce(a, b).item(), rel=1e-12)


def test_zero_embedding_is_finite():
    # The clamped norm gives a zero row zero similarity instead of 0/0.
    a = torch.tensor([[0.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = info_nce(a, torch.eye(2))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all()


def test_low_precision_inputs_give_fp32_loss():
    a, b = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    reference = info_nce(a, b)
    loss = info_nce(a.bfloat16(), b.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(info_nce(a.bfloat16().float(), b.bfloat16().float()).item(), rel=1e-6)
    # Autocast would run the logits matmul in bf16; the loss switches it off.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert info_nce(a, b).item() == reference.item()


class Towers(nn.Module):
    """A stand-in for the model with its sharing pattern: answers go through the text encoder, and
    the bridge output depends on the video encoder as well as on its own weights."""

    def __init__(self) -> None:
        super().__init__()
        self.text, self.video, self.bridge = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        caption, video, answer, question = x.unbind(1)
        video_embedding = self.video(video)
        bridge_embedding = self.bridge(question) + video_embedding
        return self.text(caption), video_embedding, self.text(answer), bridge_embedding


def setup_model() -> tuple[Towers, torch.Tensor]:
    torch.manual_seed(0)
    inputs = torch.randn(BATCH, 4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return Towers().double(), inputs


def distributed_step(rank: int, port: int, out_dir: str) -> None:
    """One data-parallel rank: half the batch, the distributed loss, then the gradient and loss
    averaging that DDP / DeepSpeed do."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        model, inputs = setup_model()
        n = BATCH // WORLD
        embeddings = model(inputs[rank * n : (rank + 1) * n])
        out = MCQLoss()(*embeddings)
        out.loss.backward()
        grads = [p.grad for p in model.parameters()]
        terms = torch.stack([t.detach() for t in out])
        for tensor in [*grads, terms]:
            dist.all_reduce(tensor)
            tensor /= WORLD
        choices = mcq_choices(embeddings[2], embeddings[3], KEYS[rank * n : (rank + 1) * n])
        torch.save({"terms": terms, "grads": grads, "choices": list(choices)}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_one_process(tmp_path):
    mp.spawn(distributed_step, args=(free_port(), str(tmp_path)), nprocs=WORLD)

    model, inputs = setup_model()
    text, video, answer, bridge = model(inputs)
    loss_vt, loss_mcq = info_nce(text, video), info_nce(answer, bridge)
    (loss_vt + loss_mcq).backward()
    expected_terms = torch.stack([loss_vt + loss_mcq, loss_vt, loss_mcq]).detach()

    expected = mcq_choices(answer, bridge, KEYS)
    n = BATCH // WORLD
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(result["terms"], expected_terms, rtol=1e-12, atol=1e-12)
        for got, param in zip(result["grads"], model.parameters(), strict=True):
            torch.testing.assert_close(got, param.grad, rtol=1e-10, atol=1e-12)
        correct, chance = result["choices"]  # each rank's samples chose among both ranks' answers
        assert torch.equal(correct, expected.correct[rank * n : (rank + 1) * n])
        torch.testing.assert_close(chance, expected.chance[rank * n : (rank + 1) * n])


def test_mcq_weight_scales_the_mcq_term_and_zero_needs_no_bridge():
    text, video, answer, bridge = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    full = MCQLoss()(text, video, answer, bridge)
    half = MCQLoss(mcq_weight=0.5)(text, video, answer, bridge)
    assert half.loss.item() == pytest.approx(full.loss_vt.item() + 0.5 * full.loss_mcq.item(), rel=1e-12)
    assert half.loss_mcq.item() == pytest.approx(full.loss_mcq.item(), rel=1e-12)
    alone = MCQLoss(mcq_weight=0)(text, video)
    assert alone.loss.item() == pytest.approx(info_nce(text, video).item(), rel=1e-12)
    assert alone.loss_mcq.item() == 0
    with pytest.raises(ValueError, match="must not be negative"):
        MCQLoss(mcq_weight=-1)


def test_answer_choices_by_hand():
    """Sample 0 and 2 have the same answer, so picking either of them is right for both."""
    answer = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    bridge = torch.tensor([[0.9, 0.1], [1.0, 0.0], [0.0, 1.0]])  # right, wrong (picks 0), wrong (picks 1)
    choices = mcq_choices(answer, bridge, torch.tensor([7, 8, 7]))
    assert choices.correct.tolist() == [True, False, False]
    assert choices.chance.tolist() == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    # a bridge that copies its answer is always right, whatever the duplicates
    assert mcq_choices(answer, answer + 0.01 * torch.randn(3, 2), torch.tensor([7, 8, 7])).correct.all()


def test_answer_keys_ignore_padding_and_tell_answers_apart():
    ids = torch.tensor([[101, 103, 2003, 102, 0, 0], [101, 103, 2003, 102, 0, 0], [101, 103, 2004, 102, 0, 0],
                        [101, 103, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    keys = answer_keys(ids, mask)
    assert keys[0] == keys[1] and len(set(keys.tolist())) == 3
    assert torch.equal(answer_keys(ids[:, :4], mask[:, :4]), keys)  # padded to another length: the same keys
