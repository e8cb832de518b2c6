"""MSR-VTT: ``MSR_VTT.json`` + the JSFusion (1k-A) split lists + the test caption index, videos in ``videos/all``.

``--split test`` gives exactly the 1,000 standard 1k-A pairs: the videos of
``val_list_jsfusion.txt``, each with the one caption that ``jsfusion_val_caption_idx.pkl`` picks
from its captions in ``MSR_VTT.json`` order. The two training splits papers fine-tune on keep all of a
video's captions (fine-tuning draws one per step, as the original): ``--split train`` the 9,000 videos of
``train_list_jsfusion.txt`` ("Training-9K"), ``--split train7k`` the 7,010 videos of the official training and
validation splits ("Training-7K": ``train_list_full.txt`` + ``val_list_full.txt``, or CLIP4Clip's
``MSRVTT_train.7k.csv``).

Files are looked up in the published layout (``annotation/``, ``high-quality/structured-symlinks/``)
and, failing that, at the top of the root, where several repackagings put them.

The caption index is a pickle, and unpickling runs code chosen by whoever made the file. It is read
by :class:`DataOnlyUnpickler`, which builds only plain data; or the same table may be given as a CSV.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Iterator

from mcq_shards.sources import Row, escapes, make_key
from mcq_shards.tables import InputError, read_json, read_lines, read_table

SPLITS = ("test", "train", "train7k")
SPLIT_LISTS = {"train": ("train_list_jsfusion.txt",), "test": ("val_list_jsfusion.txt",),
               "train7k": ("train_list_full.txt", "val_list_full.txt")}
CLIP4CLIP_7K = "MSRVTT_train.7k.csv"
CAPTION_INDEX = "jsfusion_val_caption_idx.pkl"
TEST_SIZE = 1000


def find(root: Path, name: str, *subdirs: str) -> Path:
    """``root/<subdir>/name`` for the first subdir that has it, else ``root/name``."""
    for candidate in [root / d / name for d in subdirs] + [root / name]:
        if candidate.is_file():
            return candidate
    raise InputError(root, None, None, f"{name} not found in {[str(root / d) for d in subdirs]} or {root}")


def read(root: Path, split: str, annotations: Path | None = None, split_list: Path | None = None,
         caption_index: Path | None = None, videos: Path | None = None, outside_paths: bool = False
         ) -> Iterator[Row]:
    """`outside_paths` reads video ids that lead out of the video folder instead of rejecting them."""
    lists = ("high-quality/structured-symlinks",)
    annotations = annotations or find(root, "MSR_VTT.json", "annotation")
    videos = videos or root / "videos" / "all"
    captions = captions_by_video(annotations)
    chosen = None
    if split == "test":
        chosen = read_caption_index(caption_index or find(root, CAPTION_INDEX, *lists))
    for list_file, line, video_id in _listed_videos(root, split, split_list, lists):
        all_captions = captions.get(video_id)
        if not all_captions:
            raise InputError(list_file, line, 1, f"{video_id} has no caption in {annotations}")
        extra = {"split": split}
        if split == "test":
            if video_id not in chosen:
                raise InputError(list_file, line, 1, f"{video_id} has no entry in the caption index")
            index = chosen[video_id]
            if not 0 <= index < len(all_captions):
                raise InputError(list_file, line, 1,
                                 f"caption index {index} for {video_id} is out of range (it has {len(all_captions)})")
            caption = all_captions[index]
        else:
            caption, extra["captions"] = all_captions[0], all_captions
        yield Row(source="msrvtt", key=make_key("msrvtt", video_id), id=video_id, caption=caption,
                  media=str(videos / f"{video_id}.mp4"), kind="video", where=f"{list_file}:{line}", extra=extra,
                  reject=None if outside_paths else escapes(f"{video_id}.mp4"))


def _listed_videos(root: Path, split: str, split_list: Path | None, lists: tuple[str, ...]
                   ) -> Iterator[tuple[Path, int, str]]:
    """(list file, line, video id) of every video of the split, from ``--split-list``, the split's list files, or
    for ``train7k`` CLIP4Clip's CSV (``video_id`` column) when that is what the root holds."""
    if split_list is None and split == "train7k" and not any((root / d / SPLIT_LISTS[split][0]).is_file()
                                                             for d in lists + ("",)):
        split_list = find(root, CLIP4CLIP_7K, "msrvtt_data")
    if split_list is not None and split_list.suffix.lower() == ".csv":
        for line, r in read_table(split_list, ["video_id"]):
            yield split_list, line, r["video_id"].strip()
        return
    for path in [split_list] if split_list else [find(root, name, *lists) for name in SPLIT_LISTS[split]]:
        for line, video_id in enumerate(read_lines(path), start=1):
            yield path, line, video_id


def captions_by_video(path: Path) -> dict[str, list[str]]:
    """Captions per video id in file order, from Frozen's COCO-like ``annotations`` (``image_id``,
    ``caption``) or the original MSR-VTT ``sentences`` (``video_id``, ``caption``)."""
    data = read_json(path)
    if not isinstance(data, dict) or not ({"annotations", "sentences"} & data.keys()):
        raise InputError(path, 1, 1, "expected a JSON object with an 'annotations' or 'sentences' list")
    field, id_key = ("annotations", "image_id") if "annotations" in data else ("sentences", "video_id")
    captions: dict[str, list[str]] = {}
    for n, item in enumerate(data[field]):
        if not isinstance(item, dict) or id_key not in item or "caption" not in item:
            raise InputError(path, None, None, f"{field}[{n}] lacks '{id_key}' or 'caption': {item!r:.200}")
        captions.setdefault(str(item[id_key]), []).append(item["caption"])
    return captions


def read_caption_index(path: Path) -> dict[str, int]:
    """Video id -> caption index, from the pickle (read without running code) or a ``video_id,caption_index`` CSV."""
    if path.suffix.lower() == ".csv":
        table = {}
        for line, r in read_table(path, ["video_id", "caption_index"]):
            try:
                table[r["video_id"]] = int(r["caption_index"])
            except ValueError:
                raise InputError(path, line, 2, f"caption_index {r['caption_index']!r} is not an integer") from None
        return table
    hint = (f"give the {CAPTION_INDEX} of Frozen-in-Time's MSRVTT.zip, or the same table as a CSV "
            "(video_id,caption_index) with --caption-index")
    try:
        value = DataOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as err:  # it builds plain data only, so any error means a malformed or foreign pickle
        raise InputError(path, None, None, f"cannot read caption index ({type(err).__name__}: {err}); {hint}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in value.items()):
        raise InputError(path, None, None, f"caption index must map video ids (str) to caption indices (int); {hint}")
    return value


class _Dtype:
    """Stands in for ``numpy.dtype`` while unpickling: remembers the type code and byte order only."""

    def __init__(self, code: str, *_):
        self.code, self.order = code, "<"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>|=":
            self.order = state[1]


def _numpy_int(dtype: _Dtype, raw: bytes) -> int:
    """Stands in for ``numpy.core.multiarray.scalar``: decodes an integer scalar from its bytes."""
    if not isinstance(dtype, _Dtype) or dtype.code[:1] not in "iu" or not isinstance(raw, bytes):
        raise pickle.UnpicklingError("only integer numpy scalars are accepted")
    return int.from_bytes(raw, "big" if dtype.order == ">" else "little", signed=dtype.code[0] == "i")


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Stands in for ``_codecs.encode``, which protocols 0-2 use to spell bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin-1 byte strings are accepted")
    return text.encode("latin1")


class DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data (dicts, lists, str, int, ...) and nothing else.

    Pickles name the functions that rebuild their objects, and the stock unpickler calls them. This
    one resolves no name at all except numpy's integer scalar and dtype and the bytes helper of old
    protocols, which it maps to the small decoders above (``pickle.dump`` of a dict whose values came
    from numpy writes those), so no code from the file runs.
    """

    SAFE = {
        ("numpy.core.multiarray", "scalar"): _numpy_int,
        ("numpy._core.multiarray", "scalar"): _numpy_int,
        ("numpy", "dtype"): _Dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.SAFE[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain data is read") from None
