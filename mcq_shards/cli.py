"""``mcq-shards``: convert raw data sets into tar shards for mcq-ds, and verify shard directories."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mcq_shards import __version__, synth
from mcq_shards.convert import ConvertError, Options, convert
from mcq_shards.errors import describe_os_error
from mcq_shards.phrases import DEFAULT_MODEL, SOURCES
from mcq_shards.sources import didemo, lsmdc, msrvtt, msvd
from mcq_shards.tables import InputError


BY_SPLIT = "by split"  # a benchmark's default order: shuffled training splits, the test split as its files list it


def _conversion_options(parser: argparse.ArgumentParser, shuffle: bool | str = True) -> None:
    parser.add_argument("-o", "--out", type=Path, required=True,
                        help="output directory; rerun the same command into it to resume")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="worker processes (default: all %(default)s CPUs); does not change the output")
    parser.add_argument("--shard-size", type=int, default=1000, help="input rows per shard (default %(default)s)")
    parser.add_argument("--prefix", help="shard file prefix (default: the source name)")
    parser.add_argument("--image-size", type=int, default=256,
                        help="short side of stored images and frames, never upscaled (default %(default)s)")
    parser.add_argument("--jpeg-quality", type=int, default=80, help="JPEG quality 1-100 (default %(default)s)")
    parser.add_argument("--fps", type=float, default=2.0,
                        help="video frames kept per second of the original (default %(default)s)")
    parser.add_argument("--min-frames", type=int, default=8,
                        help="frames kept from any video; shorter videos are rejected (default %(default)s)")
    parser.add_argument("--max-frames", type=int, default=32, help="most frames kept per video (default %(default)s)")
    parser.add_argument("--spacy-model", default=DEFAULT_MODEL, help="spaCy pipeline for phrases (default %(default)s)")
    parser.add_argument("--phrases", choices=SOURCES, default="textblob",
                        help="noun phrases: textblob (the original's: TextBlob noun_phrases, lower-case, no "
                             "determiners, NN* words when none) or spacy (noun chunks as written); verbs are always "
                             "the original's spaCy pattern (default %(default)s)")
    parser.add_argument("--phrases-file", type=Path, metavar="FILE",
                        help="your own phrases instead: .jsonl or .csv (id or caption, nouns, verbs), or the "
                             "original's *_noun_verb.tsv (matched by caption); samples it lacks are rejected")
    order = parser.add_mutually_exclusive_group()
    shown = {True: "%(default)s", False: "off: input order",
             BY_SPLIT: "0 for a training split, off for the test split"}[shuffle]
    order.add_argument("--shuffle-seed", type=int, default=0 if shuffle is True else None,
                       help="store the rows in a global shuffle with this seed, so every shard (and so every batch) "
                            f"mixes the whole input instead of neighbouring rows (default {shown})")
    order.add_argument("--no-shuffle", action="store_true", help="keep the input order")
    parser.add_argument("--part", type=_part, metavar="I/N",
                        help="convert only part I (from 0) of N, for N machines (a SLURM array job: --part "
                             "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT), each into its own -o; then "
                             "`mcq-shards merge -o OUT PART_DIRS...` (default: the whole input)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _part(text: str) -> tuple[int, int]:
    index, slash, count = text.partition("/")
    if not (slash and index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N with 0 <= I < N, e.g. 0/4")
    return int(index), int(count)


def _shuffle_seed(args: argparse.Namespace) -> int | None:
    if args.no_shuffle:
        return None
    if args.shuffle_seed is None and args.command in BENCHMARKS and args.split != "test":
        return 0  # a training split mixes every video into every shard; a test split keeps its files' order
    return args.shuffle_seed


def _test_set_options(parser: argparse.ArgumentParser, published: int | None) -> None:
    size = f"the published {published:,}" if published else "none published: the split files' own count"
    parser.add_argument("--test-size", type=int, default=published, metavar="N",
                        help=f"videos the test split must have (default: {size}); give it for another layout, such "
                             "as the demo data's")
    parser.add_argument("--allow-partial", action="store_true",
                        help="accept a test split with fewer videos than that, or with videos rejected (missing or "
                             "undecodable): its numbers are then not comparable with published ones")


def _outside_paths_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-outside-paths", action="store_true",
                        help="read media paths from the table that are absolute or climb out of the data folder "
                             "with '..' (default: such rows are rejected, so a table cannot pull in other files)")


def _patterns(values: list[str]) -> list[Path]:
    """Shard paths from arguments that may use brace ranges, ``'shards/{00000..00099}.tar'``."""
    from braceexpand import braceexpand

    return [Path(p) for value in values for p in braceexpand(value)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcq-shards", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mcq-shards {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("cc3m", help="Conceptual Captions: TSV + downloaded images, or img2dataset shards",
                            description="Convert CC3M. Either the TSV (caption<TAB>url) with --images (img2dataset "
                                        "'files' layout or crc32(url) file names), or img2dataset WebDataset "
                                        "shards with --wds.")
    p.add_argument("tsv", nargs="?", type=Path, help="Train_GCC-training.tsv or Validation_GCC-1.1.0-Validation.tsv")
    p.add_argument("--images", type=Path, help="folder of downloaded images")
    p.add_argument("--naming", choices=["auto", "img2dataset", "crc32"], default="auto",
                   help="how the image files are named (default: detected)")
    p.add_argument("--wds", nargs="+", metavar="SHARD", help="img2dataset output shards instead of TSV + images")
    _conversion_options(p)

    p = commands.add_parser("webvid", help="WebVid: CSV + videos/<page_dir>/<videoid>.mp4",
                            description="Convert WebVid from its CSV (videoid, contentUrl, duration, page_dir, name).")
    p.add_argument("csv", type=Path, help="e.g. results_2M_train.csv")
    p.add_argument("--videos", type=Path, help="folder holding <page_dir>/<videoid>.mp4 (default: CSV folder/videos)")
    _outside_paths_option(p)
    _conversion_options(p)

    p = commands.add_parser("msrvtt", help="MSR-VTT 1k-A test pairs or the 9k / 7k training videos",
                            description="Convert MSR-VTT: --split test gives exactly the 1,000 standard 1k-A "
                                        "(JSFusion) text-video pairs, --split train the 9,000 JSFusion training "
                                        "videos, --split train7k the 7,010 of the official train + val splits, "
                                        "all captions kept.")
    p.add_argument("root", type=Path, help="MSR-VTT folder (annotation/, high-quality/structured-symlinks/, videos/all/)")
    p.add_argument("--split", choices=list(msrvtt.SPLITS), default="test", help="default %(default)s")
    p.add_argument("--annotations", type=Path, help="MSR_VTT.json (default: found under ROOT)")
    p.add_argument("--split-list", type=Path, help="video id list, or a CSV with a video_id column such as "
                   "CLIP4Clip's MSRVTT_train.7k.csv (default: found under ROOT)")
    p.add_argument("--caption-index", type=Path,
                   help="jsfusion_val_caption_idx.pkl, or a CSV with video_id,caption_index (default: found under ROOT)")
    p.add_argument("--videos", type=Path, help="folder of <video_id>.mp4 (default ROOT/videos/all)")
    _outside_paths_option(p)
    _test_set_options(p, msrvtt.TEST_SIZE)
    _conversion_options(p, shuffle=BY_SPLIT)

    p = commands.add_parser("msvd", help="MSVD: 670 test videos (every caption a query), 1,200 training videos",
                            description="Convert MSVD from raw-captions.pkl and {train,val,test}_list.txt "
                                        "(CLIP4Clip's / collaborative-experts' layout); every caption of a video is "
                                        "kept, the test protocol makes each one a query.")
    p.add_argument("root", type=Path, help="MSVD folder (raw-captions.pkl, *_list.txt, YouTubeClips/)")
    p.add_argument("--split", choices=list(msvd.SPLITS), default="test", help="default %(default)s")
    p.add_argument("--captions", type=Path, help="raw-captions.pkl, or a JSON {video id: [captions]} (default: "
                   "found under ROOT)")
    p.add_argument("--split-list", type=Path, help="video id list (default: ROOT/<split>_list.txt)")
    p.add_argument("--videos", type=Path, help="folder holding <video id>.avi anywhere below (default ROOT)")
    _test_set_options(p, msvd.TEST_SIZE)
    _conversion_options(p, shuffle=BY_SPLIT)

    p = commands.add_parser("lsmdc", help="LSMDC: the 1,000-clip public test, or the training / validation clips",
                            description="Convert LSMDC from its tab-separated annotation files (LSMDC16_annos_"
                                        "training.csv, LSMDC16_annos_val.csv, LSMDC16_challenge_1000_publictect.csv).")
    p.add_argument("root", type=Path, help="LSMDC folder (the annotation files and the clips' movie folders)")
    p.add_argument("--split", choices=list(lsmdc.SPLITS), default="test", help="default %(default)s")
    p.add_argument("--annotations", type=Path, help="the split's annotation file (default: found under ROOT)")
    p.add_argument("--videos", type=Path, help="folder holding <movie>/<clip id>.avi anywhere below (default ROOT)")
    _test_set_options(p, lsmdc.TEST_SIZE)
    _conversion_options(p, shuffle=BY_SPLIT)

    p = commands.add_parser("didemo", help="DiDeMo: paragraph-to-video retrieval, first 30 s of each video",
                            description="Convert DiDeMo from {train,val,test}_data.json (+ CLIP4Clip's *_list.txt "
                                        "when present): one sample per video, its moments' descriptions joined into "
                                        "one paragraph, the video's first --max-seconds kept.")
    p.add_argument("root", type=Path, help="DiDeMo folder (*_data.json, optional *_list.txt, the videos)")
    p.add_argument("--split", choices=list(didemo.SPLITS), default="test", help="default %(default)s")
    p.add_argument("--annotations", type=Path, help="the split's *_data.json (default: found under ROOT)")
    p.add_argument("--split-list", type=Path, help="video names to keep (default: ROOT/<split>_list.txt when there "
                   "is one, else every video of the annotation file)")
    p.add_argument("--videos", type=Path, help="folder holding the videos by name anywhere below (default ROOT)")
    p.add_argument("--max-seconds", type=float, default=didemo.ANNOTATED_SECONDS,
                   help="keep each video's first seconds, the span DiDeMo's moments were annotated on (default "
                        "%(default)s)")
    _test_set_options(p, didemo.TEST_SIZE)
    _conversion_options(p, shuffle=BY_SPLIT)

    p = commands.add_parser("wds", help="WebDataset shards from img2dataset / video2dataset",
                            description="Re-shard WebDataset tars (media + txt/json per sample), adding phrases "
                                        "and normalising the media.")
    p.add_argument("shards", nargs="+", help="input shards; brace ranges like 'in/{00000..00099}.tar' work")
    _conversion_options(p)

    p = commands.add_parser("csv", help="your own data: a CSV of media path and caption",
                            description="Convert a CSV of (media path, caption); images and videos are told apart "
                                        "by file extension.")
    p.add_argument("csv", type=Path)
    p.add_argument("--root", type=Path, help="base of relative media paths (default: the CSV's folder)")
    p.add_argument("--path-column", default="path", help="default %(default)s")
    p.add_argument("--caption-column", default="caption", help="default %(default)s")
    p.add_argument("--id-column", help="column with a unique id for keys (default: the row number)")
    p.add_argument("--delimiter", default=",", help="default %(default)r")
    _outside_paths_option(p)
    _conversion_options(p)

    p = commands.add_parser("verify", help="check a shard directory's manifest, tars, index files and rejects",
                            description="Check manifest.json, every tar (size, SHA-256, GNU format, samples), "
                                        "every .idx and rejects.jsonl against each other; exit 1 on any difference.")
    p.add_argument("dir", type=Path)
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = commands.add_parser("merge", help="join the parts of a conversion made with --part i/N into one shard set",
                            description="Move the shards of every part (all N, each converted with --part i/N into "
                                        "its own folder) into OUT and write its manifest: the shard set one machine "
                                        "would have written. Parts on OUT's file system move by renaming.")
    p.add_argument("parts", nargs="+", type=Path, metavar="PART_DIR")
    p.add_argument("-o", "--out", type=Path, required=True, help="the shard folder to make")

    p = commands.add_parser("synth", help="write a small procedural demo data set in the raw published layouts")
    synth.add_arguments(p)
    return parser


BENCHMARKS = ("msrvtt", "msvd", "lsmdc", "didemo")


def _rows(args: argparse.Namespace):
    from mcq_shards.sources import cc3m, usercsv, wds, webvid

    if args.command == "cc3m":
        if args.wds:
            return wds.read(_patterns(args.wds), "cc3m")
        if not (args.tsv and args.images):
            raise InputError("cc3m", None, None, "give the TSV and --images, or --wds shards")
        return cc3m.read(args.tsv, args.images, args.naming)
    if args.command == "webvid":
        return webvid.read(args.csv, args.videos or args.csv.parent / "videos", args.allow_outside_paths)
    if args.command == "msrvtt":
        return msrvtt.read(args.root, args.split, args.annotations, args.split_list, args.caption_index, args.videos,
                           args.allow_outside_paths)
    if args.command == "msvd":
        return msvd.read(args.root, args.split, args.captions, args.split_list, args.videos)
    if args.command == "lsmdc":
        return lsmdc.read(args.root, args.split, args.annotations, args.videos)
    if args.command == "didemo":
        return didemo.read(args.root, args.split, args.annotations, args.split_list, args.videos)
    if args.command == "wds":
        return wds.read(_patterns(args.shards), "wds")
    return usercsv.read(args.csv, args.root or args.csv.parent, args.path_column, args.caption_column,
                        args.id_column, args.delimiter, args.allow_outside_paths)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "synth":
        return synth.run(args)
    if args.command == "verify":
        from mcq_shards.verify import describe, verify

        problems = verify(args.dir, progress=not args.quiet)
        for problem in problems:
            print(problem)
        for line in describe(args.dir):
            print(f"{args.dir}: {line}")
        print(f"{args.dir}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    if args.command == "merge":
        from mcq_shards.parts import merge

        try:
            manifest = merge(args.out, args.parts)
        except ConvertError as err:
            print(f"mcq-shards merge: error: {err}", file=sys.stderr)
            return 2
        print(f"{manifest['samples']} samples in {len(manifest['shards'])} shards from {len(args.parts)} parts "
              f"-> {args.out}")
        return 0
    test_set = args.command in BENCHMARKS and args.split == "test"
    try:
        # Benchmark sets keep captions without a noun phrase: they are evaluated and fine-tuned on without the
        # BridgeFormer, so no question is built from them, and a test set must stay whole.
        options = Options(shard_size=args.shard_size, image_size=args.image_size, jpeg_quality=args.jpeg_quality,
                          fps=args.fps, min_frames=args.min_frames, max_frames=args.max_frames,
                          require_nouns=args.command not in BENCHMARKS, spacy_model=args.spacy_model,
                          shuffle_seed=_shuffle_seed(args), phrases=args.phrases,
                          phrases_file=str(args.phrases_file) if args.phrases_file else None,
                          max_seconds=getattr(args, "max_seconds", None))
        rows = list(_rows(args))
        if test_set:
            _check_listed(args, len(rows))
        manifest = convert(rows, args.out, args.command, options, args.workers, args.prefix, not args.quiet,
                           args.part)
    except (InputError, ConvertError, ValueError) as err:
        print(f"mcq-shards {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only or foreign output folder
        print(f"mcq-shards {args.command}: error: {describe_os_error(err, args.out)}; rerun the same command to "
              "resume afterwards", file=sys.stderr)
        return 2
    reasons = ", ".join(f"{n} {r}" for r, n in manifest["reject_reasons"].items())
    of = f" (part {args.part[0]}/{args.part[1]}: join all with mcq-shards merge)" if args.part else ""
    print(f"{manifest['samples']} samples in {len(manifest['shards'])} shards, {manifest['rejects']} rejected"
          f"{f' ({reasons})' if reasons else ''} -> {args.out}{of}")
    if test_set and manifest["rejects"]:
        message = (f"the {args.command} test set is incomplete: {manifest['rejects']} of its {len(rows)} videos were "
                   f"rejected (listed with reasons in {args.out / 'rejects.jsonl'})")
        if not args.allow_partial:
            print(f"mcq-shards {args.command}: error: {message}; its numbers would not be comparable with published "
                  "ones. Restore those videos and rerun this command (finished shards are kept), or pass "
                  "--allow-partial", file=sys.stderr)
            return 2
        print(f"warning: {message}; --allow-partial given", file=sys.stderr)
    return 0


def _check_listed(args: argparse.Namespace, listed: int) -> None:
    """A test split whose files list another number of videos than the published test set is not that test set."""
    if args.test_size is None or listed == args.test_size:
        return
    message = (f"the {args.command} test split lists {listed:,} videos, the test set has {args.test_size:,}")
    if listed > args.test_size or not args.allow_partial:
        raise InputError(args.root, None, None, f"{message}: are these the published split files? Give --test-size "
                         f"{listed} for another layout" + ("" if listed > args.test_size else ", or --allow-partial "
                                                            "to evaluate a partial set"))
    print(f"warning: {message}; --allow-partial given", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
