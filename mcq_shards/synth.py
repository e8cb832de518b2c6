"""A small procedural video-caption data set, written in the layouts of the real raw data.

The README's main command has to convert and train on *something* without downloading anything, and
what it trains on should make the MCQ pretext task meaningful: noun questions ("what is red?") must be
answerable from a single frame, verb questions ("what does the square do?") only from several frames.
So every clip is one coloured shape on a textured background that rests, sways, orbits, pulses, blinks or
flashes, and its caption names all of that ("a red square is swaying on a striped background").

The motions are the ones MCQ's VideoFormer can see. It has no temporal position and its frames meet only
in the [CLS] token, so it sees a clip's frames as an unordered set: "moving left" and "moving right" (or
growing and shrinking) are the same set of frames, and no verb question about them can be answered. Each
motion here differs from the others in the set of frames it leaves (the positions on a horizontal line or
a circle, the sizes, frames with and without the shape, light and dark shapes, or one pose repeated),
while any single frame of it could come from most motions. Three of them change what a frame shows (its
size, its presence, its brightness) and three where it is; a tiny VideoFormer trained from scratch learns
the first kind in a few hundred steps and the second far more slowly, which is why both are here. Each
motion has one wording, a verb phrase the offline parser takes whole ("is swaying"), so a verb question
masks all of the motion and nothing else names it.
Some (colour, shape, motion) combinations never occur in training and make up the MSR-VTT-style test
split, so zero-shot retrieval measures composition, not memorisation.

Nothing here writes shards: the output is raw data exactly as WebVid, CC3M and MSR-VTT publish it,
so the demo goes through the same converters as the real data sets.

Everything is decided up front from the seed in this process (one random stream per split), and the
workers only render, so the output is identical for a given seed whatever the number of workers.
"""

from __future__ import annotations

import argparse
import colorsys
import csv
import inspect
import itertools
import json
import math
import multiprocessing
import os
import pickle
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 195, 60),
    "blue": (45, 95, 245),
    "yellow": (245, 220, 35),
    "white": (245, 245, 245),
    "purple": (160, 60, 215),
    "orange": (250, 135, 25),
}

# Motion key -> its verb phrase. Progressive forms because spaCy's small English model, which finds the
# verb phrases for MCQ's verb questions, tags "a red square sways" as a noun compound in many wordings,
# and "is swaying" as a verb always; no words after the verb, since the parser's verb phrase would leave
# them out of the question's mask ("is moving" of "is moving to the left").
MOTIONS: dict[str, str] = {
    "rest": "is resting",  # the same pose in every frame
    "sway": "is swaying",  # side to side: positions on a horizontal line
    "orbit": "is orbiting",  # around a circle
    "pulse": "is pulsing",  # growing and shrinking in place
    "blink": "is blinking",  # there in some frames, gone in others: on and off twice per clip
    "flash": "is flashing",  # light and dark in turn, twice per clip
}

# Texture key -> (modifier, noun phrase) for "on a striped background" / "against stripes". Not
# "checkered": spaCy takes it for a verb.
BACKGROUNDS: dict[str, tuple[str, str]] = {
    "stripes": ("striped", "stripes"),
    "dots": ("dotted", "dots"),
    "checkerboard": ("checkerboard", "a checkerboard"),
    "speckles": ("speckled", "speckles"),
}

# Background pattern -> the hue of its muted tones. A tiny ViT trained from scratch tells two colours apart within
# a few dozen steps but needs hundreds to tell patterns apart; with a tint of its own, the background is as quick to
# learn as the shape's colour, and what stays hard is what needs more than colour: the shape, and the motion.
TINTS: dict[str, float] = {"stripes": 0.6, "dots": 0.08, "checkerboard": 0.35, "speckles": 0.85}

# (colour, shape, motion) combinations withheld from training. Times the four backgrounds this gives
# 100 distinct test descriptions, the default test-split size.
HELD_OUT = 25

VIDEO_TEMPLATES = (
    "{a} {colour} {shape} {motion} on a {modifier} background",
    "{a} {colour} {shape} {motion} against {noun}",
    "on a {modifier} background, {a} {colour} {shape} {motion}",
)
IMAGE_TEMPLATES = (
    "{a} {colour} {shape} on a {modifier} background",
    "{a} {colour} {shape} against {noun}",
    "a picture of {a} {colour} {shape} on {noun}",
)

SHAPE_RADIUS = 0.19  # radius of a circle of the common shape area, as a fraction of the frame side
SWING = 0.2  # amplitude of swaying and orbiting, as a fraction of the frame side
SCALES = (0.8, 1.2)  # the shape's size range; pulsing sweeps 0.7-1.3, so one frame's size says little
PULSE = 0.3
# Flashing alternates the shape's brightness between 1 - BRIGHT and 1 + BRIGHT (0: black, 1: its colour, 2: white);
# every other clip keeps one brightness drawn from that range, so one frame's brightness says little.
BRIGHT = 0.3
IMAGE_SIZES = ((1.0, 1.0), (4 / 3, 1.0), (1.0, 4 / 3))  # (width, height) factors: CC3M is not square


class Outline(NamedTuple):
    """A star-shaped outline in polar form: vertex angles (sorted) and radii, scaled to area pi."""

    angles: np.ndarray
    radii: np.ndarray
    symmetry: float  # smallest rotation that maps the outline onto itself

    @classmethod
    def polygon(cls, points: Sequence[tuple[float, float]], symmetry: float) -> "Outline":
        """Equal area for every shape means size never tells the shapes apart."""
        xy = np.asarray(points, dtype=np.float64)
        area = 0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1)))
        xy *= math.sqrt(math.pi / area)
        angles = np.mod(np.arctan2(xy[:, 1], xy[:, 0]), 2 * math.pi)
        order = np.argsort(angles)
        return cls(angles[order], np.hypot(xy[:, 0], xy[:, 1])[order], symmetry)

    def radius(self, theta: np.ndarray) -> np.ndarray:
        """Distance from the centre to the outline in direction theta (vectorised over pixels)."""
        if self.angles.size == 0:
            return np.ones_like(theta)
        a = np.append(self.angles, self.angles[0] + 2 * math.pi).astype(theta.dtype)
        r = np.append(self.radii, self.radii[0]).astype(theta.dtype)
        theta = np.mod(theta - a[0], 2 * math.pi) + a[0]
        i = np.clip(np.searchsorted(a, theta, side="right") - 1, 0, len(self.angles) - 1)
        ai, aj, ri, rj = a[i], a[i + 1], r[i], r[i + 1]
        # Polar equation of the straight edge through the two neighbouring vertices.
        return ri * rj * np.sin(aj - ai) / (ri * np.sin(theta - ai) + rj * np.sin(aj - theta))

    @property
    def extent(self) -> float:
        """Circumradius, for keeping the whole shape inside the frame."""
        return float(self.radii.max()) if self.radii.size else 1.0


def _regular(n: int, inner: float | None = None) -> Outline:
    """A regular n-gon pointing up, or an n-pointed star when inner (relative radius) is given."""
    radii = [1.0, inner] * n if inner else [1.0] * n
    step = 2 * math.pi / len(radii)
    points = [(r * math.cos(j * step - math.pi / 2), r * math.sin(j * step - math.pi / 2))
              for j, r in enumerate(radii)]
    return Outline.polygon(points, 2 * math.pi / n)


_ARM = 0.32  # half-width of the cross's arms
SHAPES: dict[str, Outline] = {
    "circle": Outline(np.empty(0), np.empty(0), 2 * math.pi),
    "square": Outline.polygon([(1, 1), (-1, 1), (-1, -1), (1, -1)], math.pi / 2),
    "triangle": _regular(3),
    "star": _regular(5, inner=0.45),
    "cross": Outline.polygon(
        [(1, _ARM), (_ARM, _ARM), (_ARM, 1), (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM),
         (-1, -_ARM), (-_ARM, -_ARM), (-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM)],
        math.pi / 2,
    ),
}

Combo = tuple[str, str, str]  # (colour, shape, motion)
RGB = tuple[int, int, int]


class Pose(NamedTuple):
    """Where the shape is: centre in pixels, scale (1 = the common area), rotation in radians."""

    x: float
    y: float
    scale: float
    angle: float
    opacity: float = 1.0  # 0: not drawn
    brightness: float = 1.0  # below 1 mixes the colour toward black, above 1 toward white


@dataclass(frozen=True)
class Texture:
    """A two-tone background pattern; the seed makes the speckles reproducible in any worker."""

    kind: str
    colours: tuple[RGB, RGB]
    period: float
    angle: float
    offset: tuple[float, float]
    seed: int

    def render(self, height: int, width: int) -> np.ndarray:
        """(H, W, 3) float32 image in 0..255."""
        y, x = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
        x, y = x + self.offset[0], y + self.offset[1]
        p = self.period
        if self.kind == "stripes":
            u = x * math.cos(self.angle) + y * math.sin(self.angle)
            mix = np.clip(0.5 + 2.0 * np.sin(2 * math.pi * u / p), 0, 1)
        elif self.kind == "dots":
            d = np.hypot(np.mod(x, p) - p / 2, np.mod(y, p) - p / 2)
            mix = np.clip(0.28 * p - d + 0.5, 0, 1)
        elif self.kind == "checkerboard":
            mix = np.mod(np.floor(x / p) + np.floor(y / p), 2)
        elif self.kind == "speckles":
            cell = max(2, round(p / 4))
            grid = np.random.default_rng(self.seed).random((height // cell + 1, width // cell + 1))
            mix = np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)[:height, :width]
        else:
            raise ValueError(f"unknown texture {self.kind!r}")
        low, high = (np.asarray(c, np.float32) for c in self.colours)
        return low + (high - low) * mix[..., None].astype(np.float32)


@dataclass(frozen=True)
class Trajectory:
    """Where the shape is over a clip: a centre pose and one motion, a single period of it per clip."""

    centre: Pose
    motion: str = "rest"  # a MOTIONS key
    amplitude: float = 0.0  # pixels (sway, orbit), scale (pulse)
    phase: float = 0.0  # where in its period the motion starts, in periods

    def at(self, t: float) -> Pose:
        """The pose at time t of the clip, 0 (first frame) to 1 (last)."""
        x, y, scale, angle, opacity, brightness = self.centre
        wave = 2 * math.pi * (t + self.phase)
        first_half_period = (t + self.phase) % 0.5 < 0.25  # blinking and flashing: two periods per clip
        if self.motion == "sway":
            x += self.amplitude * math.sin(wave)
        elif self.motion == "orbit":
            x, y = x + self.amplitude * math.cos(wave), y + self.amplitude * math.sin(wave)
        elif self.motion == "pulse":
            scale += self.amplitude * math.sin(wave)
        elif self.motion == "blink":
            opacity = 1.0 if first_half_period else 0.0
        elif self.motion == "flash":
            brightness = 1 + BRIGHT if first_half_period else 1 - BRIGHT
        return Pose(x, y, scale, angle, opacity, brightness)


@dataclass(frozen=True)
class Scene:
    """One shape on one background, following `trajectory` over `frames` frames."""

    colour: RGB
    shape: str
    texture: Texture
    width: int
    height: int
    frames: int
    trajectory: Trajectory

    def render(self) -> np.ndarray:
        """(T, H, W, 3) uint8 frames with an anti-aliased shape edge.

        Only the box around the shape is drawn in each frame: the background is shared, and the
        shape covers a fraction of the frame, so this is what keeps rendering cheaper than encoding.
        """
        background = self.texture.render(self.height, self.width)
        colour = np.asarray(self.colour, np.float32)
        outline = SHAPES[self.shape]
        frames = np.repeat(np.rint(background).astype(np.uint8)[None], self.frames, axis=0)
        for frame, t in zip(frames, np.linspace(0.0, 1.0, self.frames)):
            x, y, scale, angle, opacity, brightness = self.trajectory.at(t)
            if opacity <= 0:
                continue
            shade = colour * brightness if brightness <= 1 else colour + (255 - colour) * (brightness - 1)
            unit = SHAPE_RADIUS * min(self.width, self.height) * scale  # pixels per outline unit
            reach = outline.extent * unit + 1
            top, bottom = max(0, math.floor(y - reach)), min(self.height, math.ceil(y + reach))
            left, right = max(0, math.floor(x - reach)), min(self.width, math.ceil(x + reach))
            gy, gx = np.mgrid[top:bottom, left:right].astype(np.float32) + 0.5
            dx, dy = gx - np.float32(x), gy - np.float32(y)
            edge = outline.radius(np.arctan2(dy, dx) - np.float32(angle)) * np.float32(unit)
            alpha = opacity * np.clip(0.5 + edge - np.hypot(dx, dy), 0, 1)[..., None]
            box = background[top:bottom, left:right]
            frame[top:bottom, left:right] = np.rint(box + (shade - box) * alpha).astype(np.uint8)
        return frames


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _caption(template: str, colour: str, shape: str, background: str, motion: str = "") -> str:
    modifier, noun = BACKGROUNDS[background]
    return template.format(a=_article(colour), colour=colour, shape=shape, motion=motion,
                           modifier=modifier, noun=noun)


class Described(NamedTuple):
    """What a demo caption names; "" for a part it does not name (a still has no motion)."""
    colour: str
    shape: str
    motion: str
    background: str


def describe(caption: str) -> Described:
    """The colour, shape, motion and background that one of this module's captions names (the inverse of
    `_caption` over the vocabulary), for analyses that ask which of them a model tells apart."""
    words = set(caption.replace(",", " ").split())
    colour = next((c for c in COLOURS if c in words), "")
    shape = next((s for s in SHAPES if s in words), "")
    motion = next((m for m, phrase in MOTIONS.items() if phrase in caption), "")
    background = next((b for b, (modifier, noun) in BACKGROUNDS.items() if f"{modifier} background" in caption
                       or caption.endswith((f"against {noun}", f" on {noun}"))), "")
    return Described(colour, shape, motion, background)


def all_combos() -> list[Combo]:
    """Every (colour, shape, motion) that can be rendered, in vocabulary order."""
    return list(itertools.product(COLOURS, SHAPES, MOTIONS))


def hold_out(rng: np.random.Generator, count: int = HELD_OUT) -> list[Combo]:
    """Choose combinations for the test split whose parts, and every pair of parts, stay in training.

    Greedy over a shuffled list, always taking the candidate whose colour, shape and motion have been
    held out least so far, so the test split covers the whole vocabulary evenly.
    """
    candidates = [all_combos()[i] for i in rng.permutation(len(all_combos()))]
    train = set(candidates)
    usage: dict[str, int] = {}
    chosen: list[Combo] = []
    while len(chosen) < count:
        for combo in sorted(candidates, key=lambda c: sum(usage.get(p, 0) for p in c)):
            rest = train - {combo}
            if all(any(all(o[k] == combo[k] for k in pair) for o in rest)
                   for pair in ((0, 1), (0, 2), (1, 2))):
                break
        else:
            raise ValueError(f"cannot hold out {count} combinations and keep every pair in training")
        chosen.append(combo)
        candidates.remove(combo)
        train.remove(combo)
        for part in combo:
            usage[part] = usage.get(part, 0) + 1
    return chosen


def _texture(rng: np.random.Generator, kind: str, side: int) -> Texture:
    """Muted, low-saturation tones, so that no background can be mistaken for a named colour; each pattern keeps to
    its own tint (TINTS), so a background can be told from one patch's colour as well as from its pattern."""
    hue, saturation = (TINTS[kind] + rng.uniform(-0.04, 0.04)) % 1, rng.uniform(0.15, 0.3)
    low = rng.uniform(0.15, 0.35)
    tones = (low, low + rng.uniform(0.2, 0.35))
    colours = tuple(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, v)) for v in tones)
    return Texture(kind, colours, period=side * rng.uniform(0.12, 0.2), angle=rng.uniform(0, math.pi),
                   offset=(rng.uniform(0, side), rng.uniform(0, side)), seed=int(rng.integers(2**31)))


def _tint(rng: np.random.Generator, colour: str) -> RGB:
    return tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in COLOURS[colour])


def _trajectory(rng: np.random.Generator, shape: str, motion: str, side: int) -> Trajectory:
    """The shape's path: one period of its motion over the clip, from a random phase, inside the frame."""
    outline = SHAPES[shape]
    angle = rng.uniform(0, outline.symmetry)
    scale = 1.0 if motion == "pulse" else rng.uniform(*SCALES)
    margin = outline.extent * SHAPE_RADIUS * side * (scale + PULSE * (motion == "pulse")) + 1
    reach = min(SWING * side, (side - 2 * margin) / 2) if motion in ("sway", "orbit") else 0.0
    across = reach
    along = reach if motion == "orbit" else 0.0
    x, y = (margin + a + rng.uniform(0, 1) * max(0.0, side - 2 * (margin + a)) for a in (across, along))
    amplitude = {"sway": reach, "orbit": reach, "pulse": PULSE}.get(motion, 0.0)
    brightness = 1.0 if motion == "flash" else rng.uniform(1 - BRIGHT, 1 + BRIGHT)
    return Trajectory(Pose(x, y, scale, angle, 1.0, brightness), motion, amplitude, rng.uniform(0, 1))


@dataclass(frozen=True)
class Clip:
    """A planned video: how long it is, what it shows, and its captions (one for WebVid)."""

    seconds: int
    scene: Scene
    captions: tuple[str, ...]


def plan_clip(rng: np.random.Generator, combo: Combo, background: str, side: int, fps: int,
              n_captions: int = 1) -> Clip:
    """Plan one clip of 2-4 s: its scene, and n_captions captions that differ in wording."""
    colour, shape, motion = combo
    seconds = int(rng.integers(2, 5))
    scene = Scene(_tint(rng, colour), shape, _texture(rng, background, side), side, side,
                  seconds * fps, _trajectory(rng, shape, motion, side))
    # A distinct template for each caption of the same clip.
    templates = rng.permutation(len(VIDEO_TEMPLATES))[:n_captions]
    captions = tuple(_caption(VIDEO_TEMPLATES[t], colour, shape, background, MOTIONS[motion]) for t in templates)
    return Clip(seconds, scene, captions)


def _any_background(rng: np.random.Generator) -> str:
    return str(rng.choice(list(BACKGROUNDS)))


def _plan_image(rng: np.random.Generator, side: int) -> tuple[Scene, str]:
    """A CC3M-style still and its noun-only caption; some are not square, like real CC3M images."""
    colour, shape = (str(rng.choice(list(v))) for v in (COLOURS, SHAPES))
    background = _any_background(rng)
    fw, fh = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    width, height = 2 * round(side * fw / 2), 2 * round(side * fh / 2)
    scale = rng.uniform(*SCALES)
    margin = SHAPES[shape].extent * SHAPE_RADIUS * min(width, height) * scale + 1
    pose = Pose(rng.uniform(margin, width - margin), rng.uniform(margin, height - margin), scale,
                rng.uniform(0, SHAPES[shape].symmetry))
    scene = Scene(_tint(rng, colour), shape, _texture(rng, background, min(width, height)), width,
                  height, 1, Trajectory(pose))
    caption = _caption(IMAGE_TEMPLATES[rng.integers(len(IMAGE_TEMPLATES))], colour, shape, background)
    return scene, caption


def _cycle(rng: np.random.Generator, items: Sequence, count: int) -> Iterator:
    """`count` items, each pass over `items` in a fresh random order: balanced, but not periodic."""
    for i in range(count):
        if i % len(items) == 0:
            order = rng.permutation(len(items))
        yield items[order[i % len(items)]]


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """H.264 (libx264, yuv420p), one-second GOPs, one encoder thread. The same frames
    give the same bytes within a process; between processes libx264 can round a few blocks differently."""
    _write_video(path, frames, fps, "mp4", "libx264", {"preset": "veryfast", "crf": "23", "g": str(fps), "threads": "1"})


def write_avi(path: Path, frames: np.ndarray, fps: int) -> None:
    """MPEG-4 part 2 in AVI, as MSVD and LSMDC distribute their clips; one-second GOPs, one encoder thread."""
    _write_video(path, frames, fps, "avi", "mpeg4", {"qscale": "3", "g": str(fps), "threads": "1"})


def _write_video(path: Path, frames: np.ndarray, fps: int, container_format: str, codec: str, options: dict) -> None:
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = options
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _render(job: tuple[Path, Scene, int]) -> None:
    path, scene, fps = job
    if path.suffix == ".mp4":
        write_mp4(path, scene.render(), fps)
    elif path.suffix == ".avi":
        write_avi(path, scene.render(), fps)
    else:
        Image.fromarray(scene.render()[0]).save(path, quality=92)


def _duration(seconds: int) -> str:
    """WebVid's ISO-8601 duration format, e.g. PT00H00M03S."""
    return f"PT{seconds // 3600:02d}H{seconds // 60 % 60:02d}M{seconds % 60:02d}S"


def _cc3m_name(index: int) -> str:
    """img2dataset's "files" layout: key = row index, 10,000 per folder, 5-digit folder + 4-digit rank."""
    return f"{index // 10000:05d}/{index // 10000:05d}{index % 10000:04d}.jpg"


OWNED = ("webvid", "cc3m", "msrvtt", "msvd", "lsmdc", "didemo", "synth.json")  # what synthesize writes and replaces


def synthesize(out_dir: str | os.PathLike, *, seed: int = 0, train_videos: int = 600, images: int = 200,
               test_videos: int = 100, msrvtt_train_videos: int = 20, benchmark_test_videos: int = 20,
               benchmark_train_videos: int = 12, size: int = 112, fps: int = 8, workers: int | None = None,
               overwrite: bool = False, progress: bool = False) -> dict:
    """Render the demo set into out_dir and return the summary that is also written to synth.json.

    WebVid-style training clips use every combination except the held-out ones, and so do the few
    MSR-VTT training videos (they exist because MSR-VTT loaders read a training list too); MSR-VTT
    test videos use only held-out ones, each with 2-3 paraphrased captions. CC3M-style stills have
    no motion, so any colour and shape appears there, with noun-only captions. The small MSVD, LSMDC and
    DiDeMo layouts (`mcq_shards.synth_benchmarks`) follow the same rule.
    """
    from mcq_shards import synth_benchmarks

    if size < 32 or size % 2:
        raise ValueError("size must be an even number of pixels, at least 32 (H.264 yuv420p)")
    if fps < 1 or (workers is not None and workers < 1):
        raise ValueError("fps and workers must be at least 1")
    if min(train_videos, images, test_videos, msrvtt_train_videos, benchmark_test_videos, benchmark_train_videos) < 0:
        raise ValueError("counts must not be negative")
    out = Path(out_dir)
    existing = [out / name for name in OWNED if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass overwrite=True (--overwrite) to replace it")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    # One random stream per split, so that changing one count leaves the other splits as they were.
    held_rng, webvid_rng, cc3m_rng, msrvtt_train_rng, msrvtt_test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
    held_out = hold_out(held_rng)
    seen = sorted(set(all_combos()) - set(held_out))
    webvid, cc3m, msrvtt = out / "webvid", out / "cc3m", out / "msrvtt"
    jobs: list[tuple[Path, Scene, int]] = []

    rows = []
    for i, combo in enumerate(_cycle(webvid_rng, seen, train_videos)):
        clip = plan_clip(webvid_rng, combo, _any_background(webvid_rng), size, fps)
        videoid, page_dir = 1_000_000 + i, f"{i // 50 * 50 + 1:06d}_{i // 50 * 50 + 50:06d}"
        rows.append((videoid, f"https://synth.invalid/webvid/{videoid}.mp4", _duration(clip.seconds),
                     page_dir, clip.captions[0]))
        jobs.append((webvid / "videos" / page_dir / f"{videoid}.mp4", clip.scene, fps))

    tsv_rows = []
    for i in range(images):
        scene, caption = _plan_image(cc3m_rng, size)
        tsv_rows.append((caption, f"https://synth.invalid/cc3m/{i}.jpg"))
        jobs.append((cc3m / "images" / _cc3m_name(i), scene, fps))

    train_clips = [plan_clip(msrvtt_train_rng, combo, _any_background(msrvtt_train_rng), size, fps, 3)
                   for combo in _cycle(msrvtt_train_rng, seen, msrvtt_train_videos)]
    backgrounds = list(BACKGROUNDS)
    test_clips = [  # every held-out combination on every background before any description repeats
        plan_clip(msrvtt_test_rng, held_out[k % len(held_out)],
                  backgrounds[k // len(held_out) % len(backgrounds)], size, fps,
                  int(msrvtt_test_rng.integers(2, 4)))
        for k in range(test_videos)
    ]
    ids = [f"video{n}" for n in msrvtt_test_rng.permutation(len(train_clips) + len(test_clips))]
    train_ids, test_ids = ids[:len(train_clips)], ids[len(train_clips):]
    caption_index = {vid: int(msrvtt_test_rng.integers(len(clip.captions)))
                     for vid, clip in zip(test_ids, test_clips)}
    for vid, clip in zip(ids, train_clips + test_clips):
        jobs.append((msrvtt / "videos" / "all" / f"{vid}.mp4", clip.scene, fps))
    benchmarks = synth_benchmarks.plan(out, seed, held_out, seen, size, fps, benchmark_test_videos,
                                       benchmark_train_videos)
    jobs += benchmarks.jobs

    for directory in {path.parent for path, _, _ in jobs} | {webvid, cc3m, msrvtt / "annotation"}:
        directory.mkdir(parents=True, exist_ok=True)
    _run_jobs(jobs, workers, progress)

    with open(webvid / "results_train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("videoid", "contentUrl", "duration", "page_dir", "name"))
        writer.writerows(rows)
    with open(cc3m / "Train_GCC-training.tsv", "w", encoding="utf-8") as f:
        f.writelines(f"{caption}\t{url}\n" for caption, url in tsv_rows)
    _write_msrvtt(msrvtt, train_ids, train_clips, test_ids, test_clips, caption_index)
    synth_benchmarks.write_msrvtt_7k(msrvtt / "high-quality" / "structured-symlinks",
                                     sorted(train_ids, key=lambda vid: int(vid[5:])))
    benchmarks.write()

    summary = {
        "generator": "mcq-shards synth",
        "seed": seed,
        "size": size,
        "fps": fps,
        "counts": {"webvid_train": train_videos, "cc3m_images": images,
                   "msrvtt_train": msrvtt_train_videos, "msrvtt_test": test_videos},
        "benchmark_counts": benchmarks.counts,
        "vocabulary": {
            "colours": list(COLOURS),
            "shapes": list(SHAPES),
            "motions": dict(MOTIONS),
            "backgrounds": {k: {"modifier": m, "noun": n} for k, (m, n) in BACKGROUNDS.items()},
        },
        "held_out": [list(c) for c in held_out],
        "paths": {
            "webvid_csv": "webvid/results_train.csv",
            "webvid_videos": "webvid/videos/<page_dir>/<videoid>.mp4",
            "cc3m_tsv": "cc3m/Train_GCC-training.tsv",
            "cc3m_images": "cc3m/images/<row // 10000 as %05d>/<row as %09d>.jpg (row: 0-based, in the TSV)",
            "msrvtt": "msrvtt (annotation/MSR_VTT.json, high-quality/structured-symlinks, videos/all)",
            "msvd": "msvd (raw-captions.pkl, {train,val,test}_list.txt, YouTubeClips/<id>.avi)",
            "lsmdc": "lsmdc (LSMDC16_annos_training.csv, LSMDC16_annos_val.csv, "
                     "LSMDC16_challenge_1000_publictect.csv, videos/<movie>/<clip id>.avi)",
            "didemo": "didemo ({train,val,test}_data.json, test_list.txt, videos/<name>.mp4)",
        },
    }
    with open(out / "synth.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    return summary


def _write_msrvtt(root: Path, train_ids: list[str], train_clips: list[Clip], test_ids: list[str],
                  test_clips: list[Clip], caption_index: dict[str, int]) -> None:
    """MSR_VTT.json in the COCO-like form Frozen/MCQ read, plus the 1k-A ("jsfusion") split files."""
    videos, annotations = [], []
    for split, split_ids, clips in (("train", train_ids, train_clips), ("test", test_ids, test_clips)):
        for vid, clip in zip(split_ids, clips):
            videos.append({"video_id": vid, "id": int(vid[5:]), "split": split,
                           "start time": 0.0, "end time": float(clip.seconds)})
            annotations.extend({"image_id": vid, "caption": c} for c in clip.captions)
    for n, annotation in enumerate(annotations):
        annotation["id"] = n
    with open(root / "annotation" / "MSR_VTT.json", "w", encoding="utf-8") as f:
        json.dump({"videos": videos, "annotations": annotations}, f, indent=1)
        f.write("\n")

    splits = root / "high-quality" / "structured-symlinks"
    splits.mkdir(parents=True, exist_ok=True)
    by_number = lambda vid: int(vid[5:])  # noqa: E731 - the ids' natural order, video2 before video10
    for name, split_ids in (("train_list_jsfusion.txt", train_ids), ("val_list_jsfusion.txt", test_ids)):
        (splits / name).write_text("".join(f"{vid}\n" for vid in sorted(split_ids, key=by_number)))
    ordered = {vid: caption_index[vid] for vid in sorted(caption_index, key=by_number)}
    with open(splits / "jsfusion_val_caption_idx.pkl", "wb") as f:
        pickle.dump(ordered, f, protocol=4)
    with open(splits / "jsfusion_val_caption_idx.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("video_id", "caption_index"))
        writer.writerows(ordered.items())


def _run_jobs(jobs: list[tuple[Path, Scene, int]], workers: int | None, progress: bool) -> None:
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(jobs), desc="rendering", unit="file", disable=not progress, file=sys.stderr)
    with bar:
        if workers == 1:
            for job in jobs:
                _render(job)
                bar.update()
        else:
            with multiprocessing.Pool(workers) as pool:
                for _ in pool.imap_unordered(_render, jobs, chunksize=4):
                    bar.update()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `mcq-shards synth`; mcq_shards/cli.py registers them on its subparser."""
    parser.description = (
        "Render the embedded demo data set: coloured shapes on textured backgrounds that rest, sway, orbit, "
        "pulse, blink or flash, with captions that name them. Writes raw data in the published layouts: "
        "OUT/webvid (results_train.csv + videos/<page_dir>/<videoid>.mp4), OUT/cc3m "
        "(Train_GCC-training.tsv + img2dataset-named JPEGs), OUT/msrvtt (MSR_VTT.json, 1k-A and 7k split "
        "files, videos/all), small OUT/msvd, OUT/lsmdc and OUT/didemo sets and OUT/synth.json. Held-out "
        "colour-shape-motion combinations appear only in the test splits. The same seed gives the same captions, "
        "splits and rendered frames (the encoded clips can differ by a few grey levels between runs: encoder "
        "rounding)."
    )
    default = {name: p.default for name, p in inspect.signature(synthesize).parameters.items()}
    parser.add_argument("out", metavar="OUT", help="output folder (created if missing)")
    for option, help_text in (
        ("train_videos", "WebVid-style training clips"),
        ("images", "CC3M-style still images"),
        ("test_videos", "MSR-VTT test videos, all of held-out combinations"),
        ("msrvtt_train_videos", "MSR-VTT training-list videos, of seen combinations"),
        ("benchmark_test_videos", "test videos of each of the MSVD, LSMDC and DiDeMo layouts"),
        ("benchmark_train_videos", "training videos of each of those layouts"),
        ("size", "video side in pixels, even"),
        ("fps", "frames per second; every clip lasts 2-4 s"),
        ("seed", "random seed; the same seed gives the same captions and frames"),
    ):
        parser.add_argument("--" + option.replace("_", "-"), type=int, default=default[option], metavar="N",
                            help=f"{help_text} (default %(default)s)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="render processes (default: all CPUs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace webvid/, cc3m/, msrvtt/ and synth.json if OUT already has them")


def run(args: argparse.Namespace) -> int:
    """Entry point for `mcq-shards synth`; returns the process exit status."""
    start = time.perf_counter()
    try:
        summary = synthesize(
            args.out, seed=args.seed, train_videos=args.train_videos, images=args.images,
            test_videos=args.test_videos, msrvtt_train_videos=args.msrvtt_train_videos,
            benchmark_test_videos=args.benchmark_test_videos, benchmark_train_videos=args.benchmark_train_videos,
            size=args.size, fps=args.fps, workers=args.workers, overwrite=args.overwrite, progress=True,
        )
    except (ValueError, FileExistsError) as error:
        print(f"mcq-shards synth: error: {error}", file=sys.stderr)
        return 2
    counts = {**summary["counts"], **summary["benchmark_counts"]}
    print(f"wrote {counts['webvid_train']} WebVid clips, {counts['cc3m_images']} CC3M images and "
          f"{counts['msrvtt_train']}+{counts['msrvtt_test']} MSR-VTT train+test videos, "
          + ", ".join(f"{counts[f'{b}_train']}+{counts[f'{b}_test']} {name}"
                      for b, name in (("msvd", "MSVD"), ("lsmdc", "LSMDC"), ("didemo", "DiDeMo")))
          + f" train+test videos to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcq_shards.synth")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
