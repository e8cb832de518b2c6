"""Symmetric InfoNCE with negatives from the whole global batch, for both MCQ terms (video-text and bridge-answer).

For embeddings ``a`` (rows) and ``b`` (columns) of N pairs, S is their cosine-similarity matrix and

    L = mean_i CE(S[i, :] / τ, i) + mean_j CE(S[:, j] / τ, j),

the two directions summed as in the original ``NormSoftmaxLoss``. The MCQ objective is
L(text, video) + L(answer, bridge).

Across W data-parallel ranks each holding n samples, every rank gathers the other ranks' embeddings
with a gather that keeps gradients, and scores only its own n rows and n columns against all
N = W·n (open_clip's "local loss" style): an n×N block instead of the full N×N matrix on every rank.
Its local loss is  mean over its rows of the row CE + mean over its columns of the column CE,  so

* the mean of the local losses over ranks is exactly L on the concatenated batch (all-reduce the
  returned values with AVG to log it), and
* the sum of the local losses is W·L; the gather's backward sums every rank's gradient for each
  embedding back to its owner, so after the usual data-parallel gradient *averaging* (DDP,
  DeepSpeed) the parameter gradient is exactly ∇L.

The original differs in scale: every rank computes the full N×N loss L, its gather's backward keeps
only the local slice of the incoming gradient, and DDP averages, so its update uses (1/W)·∇L. Adam
with (g/W, ε) takes exactly the step of (g, W·ε), so the engine's default ε is the original's times
the original stage's GPU count (`Stage.paper_ranks`): the same updates at any world size.

Local batch sizes must be equal on every rank (use ``drop_last`` in the training loader): the rank
offsets are rank·n, and checking sizes would cost an extra collective and a host sync every step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

DEFAULT_TEMPERATURE = 0.05


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns, to each rank, the sum over all ranks of the
    gradient for its own rows. Written on all_gather + all_reduce because gloo (CPU tests) has no
    reduce_scatter, which ``torch.distributed.nn.functional.all_gather`` needs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x, group=group)
        rank = dist.get_rank(group)
        ctx.group = group
        ctx.rows = slice(rank * len(x), (rank + 1) * len(x))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rows], None


def all_gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate ``x`` from every rank in rank order, keeping gradients for every rank's rows."""
    return _AllGatherWithGrad.apply(x, group)


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Unit rows in at least fp32 (bf16 logits over 1/τ = 20 would lose the loss's precision); the
    norm is clamped at 1e-8 like the original ``sim_matrix``, so a zero row gives zero similarity
    instead of NaN. Training, evaluation and extraction all normalise with it."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)


def _two_way_ce(
    a: torch.Tensor,
    b: torch.Tensor,
    a_all: torch.Tensor,
    b_all: torch.Tensor,
    offset: int,
    temperature: float,
) -> torch.Tensor:
    """Row CE of this process's ``a`` against all ``b`` plus column CE of its ``b`` against all ``a``;
    its pairs sit at ``offset`` in the full batch."""
    labels = torch.arange(offset, offset + len(a), device=a.device)
    # Autocast would put the matmul back in bf16/fp16; the logits are cheap, keep them precise.
    with torch.autocast(device_type=a.device.type, enabled=False):
        rows = F.cross_entropy(a @ b_all.T / temperature, labels)
        columns = F.cross_entropy(b @ a_all.T / temperature, labels)
        return rows + columns


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Symmetric InfoNCE L of the pairs (a[i], b[i]) with the rest of this batch as negatives."""
    a, b = l2_normalise(a), l2_normalise(b)
    return _two_way_ce(a, b, a, b, 0, temperature)


def distributed_info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """This rank's share of L over the global batch (see the module docstring for the scaling).

    ``a`` and ``b`` are this rank's embeddings; every rank of ``group`` must call it with the same
    local batch size. Without an initialised process group, or with one rank, it is ``info_nce``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return info_nce(a, b, temperature)
    a, b = l2_normalise(a), l2_normalise(b)
    a_all, b_all = all_gather_with_grad(a, group), all_gather_with_grad(b, group)
    return _two_way_ce(a, b, a_all, b_all, dist.get_rank(group) * len(a), temperature)


class MCQLossOutput(NamedTuple):
    """The total to back-propagate and its two terms for logging (all local: see the module
    docstring; all-reduce them with AVG to log the global-batch values)."""

    loss: torch.Tensor
    loss_vt: torch.Tensor
    loss_mcq: torch.Tensor


class MCQLoss(nn.Module):
    """MCQ pre-training objective: L(text, video) + w·L(answer, bridge), fixed τ; the paper's w = 1.

    Rows of the MCQ term are answers and columns bridge outputs, so every other sample's answer in
    the global batch is a wrong choice. Embeddings may be bf16; the loss is computed in fp32.
    With ``mcq_weight`` 0 (the paper's baseline), or without answer and bridge (fine-tuning, the
    BridgeFormer dropped), it is L(text, video) alone, and ``loss_mcq`` is zero.
    """

    def __init__(
        self,
        temperature: float = DEFAULT_TEMPERATURE,
        group: dist.ProcessGroup | None = None,
        mcq_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if mcq_weight < 0:
            raise ValueError(f"the MCQ loss weight must not be negative, got {mcq_weight}")
        self.temperature = temperature
        self.group = group
        self.mcq_weight = mcq_weight

    def forward(
        self,
        text: torch.Tensor,
        video: torch.Tensor,
        answer: torch.Tensor | None = None,
        bridge: torch.Tensor | None = None,
    ) -> MCQLossOutput:
        loss_vt = distributed_info_nce(text, video, self.temperature, self.group)
        if self.mcq_weight == 0 or (answer is None and bridge is None):
            return MCQLossOutput(loss_vt, loss_vt, torch.zeros_like(loss_vt))
        loss_mcq = distributed_info_nce(answer, bridge, self.temperature, self.group)
        return MCQLossOutput(loss_vt + self.mcq_weight * loss_mcq, loss_vt, loss_mcq)


class MCQChoices(NamedTuple):
    """How this rank's samples answered their questions, for the answer-accuracy metric.

    ``correct[i]``: sample i's bridge embedding is most similar to an answer of the global batch whose
    text equals its own (identical answers, "is spinning" asked of two clips, are the same choice).
    ``chance[i]``: the share of the global batch's answers equal to its own, i.e. how often a uniform
    random pick would be correct; its mean is the chance level of the accuracy.
    """

    correct: torch.Tensor
    chance: torch.Tensor


def answer_keys(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One int64 per answer, equal for equal token sequences (whatever the padding), different
    otherwise with overwhelming probability: a fixed random linear hash of the unpadded ids."""
    weights = torch.randint(1, 2**62, (ids.shape[1],), generator=torch.Generator().manual_seed(0))
    return ((ids.long() + 1) * mask.long() * weights.to(ids.device)).sum(1)  # int64 wraps: still a hash


@torch.no_grad()
def mcq_choices(
    answer: torch.Tensor,
    bridge: torch.Tensor,
    keys: torch.Tensor,
    group: dist.ProcessGroup | None = None,
) -> MCQChoices:
    """Which answer each of this rank's bridge embeddings picks among all ranks' answers (the
    choices the MCQ loss's bridge→answer term scores), judged by ``keys`` (``answer_keys``)."""
    answer, bridge = l2_normalise(answer), l2_normalise(bridge)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        world = dist.get_world_size(group)
        answers = [torch.empty_like(answer) for _ in range(world)]
        all_keys = [torch.empty_like(keys) for _ in range(world)]
        dist.all_gather(answers, answer.contiguous(), group=group)
        dist.all_gather(all_keys, keys.contiguous(), group=group)
        answer, keys_all = torch.cat(answers), torch.cat(all_keys)
    else:
        keys_all = keys
    with torch.autocast(device_type=bridge.device.type, enabled=False):
        picks = (bridge @ answer.T).argmax(1)
    same = keys[:, None] == keys_all[None, :]
    return MCQChoices(keys_all[picks] == keys, same.double().mean(1))
