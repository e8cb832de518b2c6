"""`mcq-ds extract` and `mcq-ds search` on real encoded videos (H.264, VP9, MPEG-4 written with PyAV), a corrupt
file, a resumed run after kill -9, and exact chunked top-k against a brute-force ranking."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mcq_ds.eval import extract, search
from mcq_ds.eval.data import ClipSpec, video_file_clip
from mcq_ds.loss import l2_normalise
from mcq_ds.model import MCQ, load_tokenizer, save_pretrained
from mcq_ds.model.presets import preset
from shards_fixtures import encode_video

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny; on a shared 2-core machine a second intra-op thread only adds contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    torch.manual_seed(0)
    model = MCQ(preset("tiny"))
    save_pretrained(model, load_tokenizer(model.cfg.text), root / "model")
    videos = root / "videos"
    (videos / "sub").mkdir(parents=True)
    encode_video(videos / "a.mp4", "h264", seconds=3)
    encode_video(videos / "sub" / "b.webm", "vp9", seconds=2, fps=8)
    encode_video(videos / "c.avi", "mpeg4", seconds=4, fps=5)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    (videos / "notes.txt").write_text("not a video\n")
    (root / "queries.txt").write_text("a white square moves\n\na gradient\n")
    return root


def parse(module, *argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_folder_extraction_reports_bad_files_and_matches_the_eval_clip(setup, capsys):
    out = setup / "out"
    assert extract.run(parse(extract, setup / "model", setup / "videos", "-o", out, "--workers", 0, "--chunk", 2,
                             "--batch-size", 2, "--texts", setup / "queries.txt", "--quiet")) == 0
    printed = capsys.readouterr().out
    assert "3 videos embedded, 1 failed" in printed and "1 non-video files ignored" in printed
    ids = extract.read_ids(out / "video_ids.txt")
    assert ids == [str(setup / "videos" / n) for n in ("a.mp4", "c.avi", "sub/b.webm")]
    emb = np.load(out / "video_embeddings.npy")
    assert emb.shape == (3, 64) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == [str(setup / "videos" / "broken.mp4")]
    assert failed[0]["reason"].startswith("undecodable video")
    assert not (out / extract.PARTS).exists()

    model = extract.load_model(setup / "model").model
    clip, _ = video_file_clip(setup / "videos" / "c.avi", ClipSpec(4, 64))
    with torch.no_grad():
        direct = l2_normalise(model.encode_video(clip)).numpy()
    assert np.allclose(emb[1], direct[0], atol=1e-5)

    texts = np.load(out / "text_embeddings.npy")
    assert extract.read_ids(out / "text_ids.txt") == ["a white square moves", "a gradient"]
    assert texts.shape == (2, 64) and np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    summary = json.loads((out / "extract.json").read_text())
    assert summary["videos"] == 3 and summary["failed"] == 1 and summary["texts"] == 2


def test_globs_lists_and_missing_files(setup, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{setup / 'videos' / 'c.avi'}\n{tmp_path / 'gone.mp4'}\n")
    paths, ignored = extract.find_videos([str(setup / "videos" / "*.mp4")], listing)
    assert paths == [str(setup / "videos" / "c.avi"), str(tmp_path / "gone.mp4"), str(setup / "videos" / "a.mp4"),
                     str(setup / "videos" / "broken.mp4")] and ignored == 0
    with pytest.raises(FileNotFoundError, match="no file matches"):
        extract.find_videos([str(tmp_path / "*.mkv")])
    out = tmp_path / "out"
    extract.run(parse(extract, setup / "model", "--list", listing, "-o", out, "--workers", 0, "--quiet"))
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert failed == [{"id": str(tmp_path / "gone.mp4"), "reason": f"file not found: {tmp_path / 'gone.mp4'}"}]


def test_a_killed_run_resumes_where_it_stopped(setup, tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(40):
        (many / f"v{i:02d}.mp4").symlink_to(setup / "videos" / "a.mp4")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mcq_ds.cli", "extract", str(setup / "model"), str(many), "-o", str(out),
               "--workers", "0", "--chunk", "1", "--batch-size", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not (out / extract.PARTS / "000002.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the extraction ended before it was killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((out / extract.PARTS).glob("*.json"))) - 1  # minus plan.json
    assert 3 <= done < 40 and not (out / "video_embeddings.npy").exists()

    args = parse(extract, setup / "model", many, "-o", out, "--workers", 0, "--chunk", 1, "--batch-size", 1,
                 "--quiet")
    assert extract.run(args) == 0
    ids = extract.read_ids(out / "video_ids.txt")
    assert ids == [str(many / f"v{i:02d}.mp4") for i in range(40)]
    emb = np.load(out / "video_embeddings.npy")
    assert np.allclose(emb, emb[0], atol=1e-5)  # one video 40 times, whichever process embedded it

    with pytest.raises(ValueError, match="other inputs or options"):
        (out / extract.PARTS).mkdir()
        (out / extract.PARTS / "plan.json").write_text(json.dumps({"count": 1}))
        extract.run(args)


def test_chunked_top_k_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((1000, 16)).astype(np.float32)
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    mapped = np.load(tmp_path / "rows.npy", mmap_mode="r")
    hits = search.chunked_topk(queries, mapped, k=5, chunk_size=37, query_block=3)
    scores = queries @ rows.T
    expected = np.argsort(-scores, axis=1)[:, :5]
    assert np.array_equal(hits.rows, expected)
    assert np.allclose(hits.scores, np.take_along_axis(scores, expected, 1), atol=1e-5)
    assert search.chunked_topk(queries, rows[:3], k=5).rows.shape == (7, 3)  # k capped by the number of rows


def test_search_command_text_queries_and_saved_queries(setup, capsys):
    out = setup / "out"
    if not (out / "video_embeddings.npy").exists():
        extract.run(parse(extract, setup / "model", setup / "videos", "-o", out, "--workers", 0, "--quiet",
                          "--texts", setup / "queries.txt"))
    capsys.readouterr()
    assert search.run(parse(search, out, "a white square moves", "--model", setup / "model", "-k", 2, "--json")) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["query"] == "a white square moves" and len(line["results"]) == 2
    video = np.load(out / "video_embeddings.npy")
    text = np.load(out / "text_embeddings.npy")
    best = int(np.argmax(video @ text[0]))
    assert line["results"][0]["id"] == extract.read_ids(out / "video_ids.txt")[best]
    assert line["results"][0]["score"] == pytest.approx(float(video[best] @ text[0]), abs=1e-5)

    assert search.run(parse(search, out, "--query-embeddings", out, "-k", 1)) == 0
    printed = capsys.readouterr().out
    assert printed.count("query: ") == 2 and printed.count("    1  ") == 2
    with pytest.raises(ValueError, match="need --model"):
        search.run(parse(search, out, "some text"))
    with pytest.raises(FileNotFoundError, match="mcq-ds extract"):
        search.run(parse(search, setup, "some text"))


def test_faiss_index_agrees_with_the_exact_search(tmp_path):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((500, 16)).astype(np.float32)
    np.save(tmp_path / "video_embeddings.npy", rows)
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    exact = search.chunked_topk(queries, rows, k=5)
    flat = search.faiss_topk(queries, tmp_path / "video_embeddings.npy", 5, "Flat")
    assert np.array_equal(flat.rows, exact.rows)
    assert (tmp_path / "video_embeddings.Flat.faiss").is_file()
    assert np.array_equal(search.faiss_topk(queries, tmp_path / "video_embeddings.npy", 5, "Flat").rows, exact.rows)
