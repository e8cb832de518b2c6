"""`mcq-ds visualize`: what the BridgeFormer looks at when it answers a noun or a verb question about a video.

Like the paper's attention figures: the caption's phrase is masked into a question (its words become [MASK]
tokens, as in pre-training, `mcq_ds.data.questions.span_question`), the model runs its pre-training forward pass on
the video, and the cross-attention of the question's tokens over each frame's patches (`mcq_ds.eval.attention`)
is drawn over the frames the model saw. First row: the frames; then one row per question.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mcq_shards.media import MediaError

from ..data.batch import Tokens
from ..data.questions import ANSWER_PROMPT, Phrase, WordPieceCounter, span_question
from ..runtime import pick_device
from .attention import question_attention
from .checkpoint import LoadedModel, load_model
from .data import ClipSpec, seen_frames, video_file_clip

PAD, LABEL = 4, 22  # pixels between cells, height of a row's label strip


@dataclass
class AttentionFigure:
    image: Image.Image
    frames: np.ndarray  # (F, S, S, 3) uint8, what the model saw
    heat: torch.Tensor  # (questions, F, gh, gw), each question's maps as computed (not rescaled)
    questions: list[str]

    @property
    def peaks(self) -> list[float]:
        """Per question, its highest attention over all frames' patches divided by the mean: 1.0 is uniform
        attention, and a map that picks out one patch of a frame's N (over F frames) reaches N·F."""
        return [float(maps.max() / maps.mean()) for maps in self.heat]


def find_phrase(caption: str, phrase: str) -> Phrase:
    """The phrase's span in the caption (first occurrence, case-insensitive)."""
    start = caption.casefold().find(phrase.casefold().strip())
    if not phrase.strip() or start < 0:
        raise ValueError(f"phrase {phrase!r} does not occur in the caption {caption!r}; give words of the caption")
    end = start + len(phrase.strip())
    return Phrase(text=caption[start:end], start=start, end=end)


def jet(x: np.ndarray) -> np.ndarray:
    """The classic jet colour map of values in [0, 1] → uint8 RGB (blue = little attention, red = most)."""
    rgb = np.clip(1.5 - np.abs(4 * x[..., None] - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).astype(np.uint8)


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int, font) -> None:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"
    draw.text(xy, text, fill=(0, 0, 0), font=font)


def draw_figure(frames: np.ndarray, heat: np.ndarray, labels: list[str], caption: str, cell: int = 224) -> Image.Image:
    """frames (F, S, S, 3) uint8; heat (Q, F, gh, gw). Each question's maps share one colour scale (its own min to
    max over all frames), so frames are comparable within a row; since that stretches even a nearly flat map to full
    colour, each row's label says how far its peak stands above uniform attention. Size: F·cell + (F+1)·PAD wide,
    (Q+1)·(LABEL + cell) + PAD high."""
    q, f = heat.shape[:2]
    width, height = f * cell + (f + 1) * PAD, (q + 1) * (LABEL + cell) + PAD
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=14)
    pictures = [Image.fromarray(x).resize((cell, cell), Image.Resampling.BILINEAR) for x in frames]
    rows = [(f"video: {caption}", pictures)]
    for label, maps in zip(labels, heat):
        low, high = maps.min(), maps.max()
        label = label.replace(":", f" (peak {high / maps.mean():.1f}x uniform):", 1)
        scaled = (maps - low) / (high - low) if high > low else np.zeros_like(maps)
        overlays = []
        for picture, m in zip(pictures, scaled):
            smooth = np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((cell, cell),
                                                                                       Image.Resampling.BICUBIC))
            overlays.append(Image.blend(picture, Image.fromarray(jet(np.clip(smooth, 0, 1))), 0.5))
        rows.append((label, overlays))
    for r, (label, images) in enumerate(rows):
        top = r * (LABEL + cell) + PAD
        _label(draw, (PAD, top + 2), label, width - 2 * PAD, font)
        for c, image in enumerate(images):
            canvas.paste(image, (PAD + c * (cell + PAD), top + LABEL))
    return canvas


def attention_figure(model: str | Path | LoadedModel, video: str | Path, caption: str, nouns: list[str],
                     verbs: list[str], frames: int | None = None, tokens: str = "words", block: int | None = -1,
                     cell: int = 224, tokenizer: str | None = None, device: str | None = None) -> AttentionFigure:
    """`model`: a checkpoint to load, or one already loaded with its BridgeFormer (`mcq-ds serve` keeps one)."""
    questions = [("noun", p) for p in nouns] + [("verb", p) for p in verbs]
    if not questions:
        raise ValueError("give at least one --noun or --verb phrase of the caption")
    device = pick_device(device)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, bridge=True, frames=frames,
                                                                      tokenizer=tokenizer)
    model, tok = loaded.model.to(device), loaded.tokenizer
    spec = ClipSpec.of(model, frames)
    try:
        clip, _ = video_file_clip(video, spec)
    except MediaError as err:
        raise ValueError(f"{video}: {err}") from None
    counter = WordPieceCounter(tok)
    phrases = [find_phrase(caption, p) for _, p in questions]
    texts = [span_question(caption, p, counter) for p in phrases]

    def encode(strings: list[str]) -> Tokens:
        t = tok(strings, padding=True, truncation=True, max_length=model.cfg.text.max_length, return_tensors="pt")
        return Tokens(t["input_ids"].to(device), t["attention_mask"].to(device))

    n = len(questions)
    video_batch = clip[:1].expand(n, *clip.shape[1:]).to(device)
    heat = question_attention(model, video_batch, encode([caption] * n), encode(texts),
                              encode([ANSWER_PROMPT + p["text"] for p in phrases]), tok.mask_token_id, tokens,
                              block).cpu()
    shown = seen_frames(clip[0], spec.normalisation)
    labels = [f"{kind} question: {text}" for (kind, _), text in zip(questions, texts)]
    return AttentionFigure(draw_figure(shown, heat.numpy(), labels, caption, cell), shown, heat, texts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a model WITH its BridgeFormer: a run's OUT/model or DeepSpeed checkpoint, "
                        "or the original MCQ.pth (pre-training weights)")
    parser.add_argument("video", help="a video file (any container PyAV reads)")
    parser.add_argument("caption", help="the video's caption")
    parser.add_argument("--noun", action="append", default=[], metavar="PHRASE",
                        help="a noun phrase of the caption to ask about (repeatable; one row each)")
    parser.add_argument("--verb", action="append", default=[], metavar="PHRASE",
                        help="a verb phrase of the caption to ask about (repeatable; one row each)")
    parser.add_argument("-o", "--out", type=Path, default=Path("attention.png"), help="PNG (default %(default)s)")
    parser.add_argument("--frames", type=int, help="frames, segment midpoints as eval (default: the model's)")
    parser.add_argument("--tokens", choices=["words", "masks", "cls"], default="words",
                        help="which question tokens' attention to draw: every word token (default), only the "
                        "[MASK] tokens of the hidden phrase, or the question [CLS]")
    parser.add_argument("--block", default="-1", help="bridge block whose cross-attention is drawn: an index "
                        "(default -1, the last) or 'mean' (all blocks averaged)")
    parser.add_argument("--cell", type=int, default=224, help="pixels per frame in the PNG (default 224)")
    parser.add_argument("--tokenizer", help="tokenizer for an original .pth checkpoint")
    parser.add_argument("--device", help="torch device (default: this rank's GPU, LOCAL_RANK, when there is one, "
                        "else the CPU)")


def run(args: argparse.Namespace) -> int:
    block = None if args.block == "mean" else int(args.block)
    figure = attention_figure(args.model, args.video, args.caption, args.noun, args.verb, args.frames, args.tokens,
                              block, args.cell, args.tokenizer, args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.image.save(args.out)
    print(f"wrote {args.out} ({figure.image.width}x{figure.image.height})")
    for question, peak in zip(figure.questions, figure.peaks):
        print(f"  {question}: peak {peak:.1f}x uniform")
    return 0
