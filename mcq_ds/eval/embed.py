"""Running the two encoders at evaluation time: precision choice, windows averaged per video, texts in batches."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..data.batch import Batch, Tokens
from ..loss import l2_normalise
from ..model import MCQ

# Weights stay fp32 in "tf32" and "fp32". "tf32" lets a GPU run the fp32 matrix products on TF32 tensor cores
# (inputs rounded to a 10-bit mantissa, sums in fp32), as the original's evaluation ran on A100s under torch 1.7.1,
# whose default that was; "fp32" is IEEE fp32 throughout. On a CPU the two are the same. "bf16"/"fp16": autocast.
PRECISIONS = {"tf32": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_PRECISION = "tf32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """The precision of an evaluation pass (see PRECISIONS), restored afterwards."""
    dtype = PRECISIONS[precision]
    if dtype is not None:
        with torch.autocast(device.type, dtype=dtype):
            yield
        return
    if device.type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@torch.no_grad()
def embed_windows(model: MCQ, video: torch.Tensor, window_owner: torch.Tensor, count: int, device: torch.device,
                  precision: str = DEFAULT_PRECISION) -> torch.Tensor:
    """(count, D) video embeddings on the CPU, fp32, not normalised: the mean over each video's windows (rows of
    `video` whose `window_owner` is that video), as the original averages windows before the cosine."""
    with autocast(device, precision):
        windows = model.encode_video(video.to(device, non_blocking=True)).float().cpu()
    summed = torch.zeros(count, windows.shape[1]).index_add_(0, window_owner, windows)
    return summed / torch.bincount(window_owner, minlength=count).unsqueeze(1)


@torch.no_grad()
def embed_batch(model: MCQ, batch: Batch, device: torch.device, precision: str = DEFAULT_PRECISION
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(video, text) embeddings of an evaluation batch, on the CPU, fp32, not normalised."""
    window_owner = batch.extra.get("window_owner", torch.arange(len(batch)))
    video = embed_windows(model, batch.video, window_owner, len(batch), device, precision)
    with autocast(device, precision):
        text = model.encode_text(Tokens(batch.text.ids.to(device), batch.text.mask.to(device))).float().cpu()
    return video, text


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def embed_texts(model: MCQ, tokenizer, texts: Sequence[str], device: torch.device, batch_size: int = 256,
                precision: str = DEFAULT_PRECISION, progress: bool = False) -> np.ndarray:
    """L2-normalised text embeddings (N, D) float32, in the order of `texts`."""
    out = []
    for chunk in tqdm(list(batched(texts, batch_size)), desc="texts", unit="batch", disable=not progress):
        tokens = tokenizer(list(chunk), padding=True, truncation=True, max_length=model.cfg.text.max_length,
                           return_tensors="pt")
        with autocast(device, precision):
            emb = model.encode_text(Tokens(tokens["input_ids"].to(device), tokens["attention_mask"].to(device)))
        out.append(l2_normalise(emb).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.cfg.embed_dim), np.float32)
