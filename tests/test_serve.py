"""`mcq-ds serve` as a person uses it: the real server process on a free local port over features that `mcq-ds
extract` wrote for the demo's MSR-VTT-layout test videos, its JSON API, bad input, a request flood, and the page
in a real headless Chromium (Debian's, through its chromedriver) with a screenshot of the results."""
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mcq_ds.cli import main
from mcq_ds.model.presets import preset
from mcq_ds.eval.checkpoint import load_model
from mcq_ds.eval.data import ClipSpec, seen_frames, video_file_clip
from mcq_ds.model import MCQ, load_tokenizer, save_pretrained
from mcq_ds.serve.app import features_folder
from mcq_ds.serve.collection import Collection, IdList
from mcq_ds.serve.ratelimit import TokenBuckets

QUERY = "a blue square is sinking"
RATE, BURST = 10, 40
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # kept after the run (git ignores it)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tiny_model(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = MCQ(preset("tiny"))
    save_pretrained(model, load_tokenizer(model.cfg.text), folder)
    return folder


@pytest.fixture(scope="module")
def demo(demo_shards, tmp_path_factory):
    """The demo's test videos (a copy, so that one can go missing), a tiny model and its extracted features."""
    root = tmp_path_factory.mktemp("serve")
    videos = root / "videos"
    shutil.copytree(demo_shards["webvid"].parent / "raw" / "msrvtt" / "videos" / "all", videos)
    model = _tiny_model(root / "model", seed=0)
    assert main(["extract", str(model), str(videos), "-o", str(root / "features"), "--workers", "0", "--quiet"]) == 0
    return {"root": root, "videos": videos, "model": model, "features": root / "features"}


@pytest.fixture(scope="module")
def server(demo):
    port = _free_port()
    log = (demo["root"] / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mcq_ds.cli", "serve", str(demo["features"]), "--model", str(demo["model"]),
         "--port", str(port), "--rate", str(RATE), "--burst", str(BURST)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, (demo["root"] / "server.log").read_text()
        try:
            with urllib.request.urlopen(f"{url}/api/info", timeout=2):
                break
        except OSError:
            assert time.monotonic() < deadline, "the server did not answer within 180 s"
            time.sleep(0.5)
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
    log.close()


def get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def get_json(url: str) -> tuple[int, dict]:
    status, headers, body = get(url)
    assert headers["content-type"].startswith("application/json"), (status, body[:200])
    return status, json.loads(body)


def search_url(server: str, query: str, k: int = 5) -> str:
    return f"{server}/api/search?" + urllib.parse.urlencode({"q": query, "k": k})


def test_search_api_gives_what_mcq_ds_search_gives(server, demo, capsys):
    status, answer = get_json(search_url(server, QUERY, 5))
    assert status == 200 and answer["query"] == QUERY and len(answer["results"]) == 5
    capsys.readouterr()
    assert main(["search", str(demo["features"]), QUERY, "--model", str(demo["model"]), "-k", "5", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["results"]
    assert [r["id"] for r in answer["results"]] == [r["id"] for r in expected]
    np.testing.assert_allclose([r["score"] for r in answer["results"]], [r["score"] for r in expected], atol=1e-5)
    assert get_json(f"{server}/search?" + urllib.parse.urlencode({"q": QUERY, "k": 5}))[1]["results"] == \
        answer["results"]  # the short path
    first = answer["results"][0]
    assert first["rank"] == 1 and not first["missing"] and Path(first["path"]).is_file()
    assert first["video"] == f"/api/video/{first['row']}" and first["thumbnail"] == f"/api/thumbnail/{first['row']}"


def test_similar_leaves_the_video_out_and_scores_by_its_embedding(server, demo):
    embeddings = np.load(demo["features"] / "video_embeddings.npy")
    ids = (demo["features"] / "video_ids.txt").read_text().splitlines()
    status, answer = get_json(f"{server}/api/similar?" + urllib.parse.urlencode({"id": ids[3], "k": 4}))
    assert status == 200 and answer["query"]["row"] == 3
    assert [r["row"] for r in answer["results"]] == [r for r in np.argsort(-(embeddings @ embeddings[3])) if r != 3][:4]
    assert 3 not in [r["row"] for r in answer["results"]]


def test_video_file_is_served_with_range_requests(server, demo):
    status, answer = get_json(search_url(server, QUERY, 1))
    hit = answer["results"][0]
    status, headers, body = get(f"{server}{hit['video']}", {"Range": "bytes=0-99"})
    data = Path(hit["path"]).read_bytes()
    assert status == 206 and body == data[:100]
    assert headers["content-range"] == f"bytes 0-99/{len(data)}" and headers["content-type"] == "video/mp4"


def test_thumbnail_shows_the_frames_the_model_saw(server, demo):
    row = 5
    status, headers, body = get(f"{server}/api/thumbnail/{row}")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    strip = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.float32)
    assert strip.shape == (112, 4 * 112 + 3 * 2, 3)
    loaded = load_model(demo["model"])
    video = (demo["features"] / "video_ids.txt").read_text().splitlines()[row]
    clip, _ = video_file_clip(video, ClipSpec.of(loaded.model))
    for n, frame in enumerate(seen_frames(clip[0], "imagenet")):
        expected = np.asarray(Image.fromarray(frame).resize((112, 112), Image.Resampling.BILINEAR), np.float32)
        assert np.abs(strip[:, n * 114:n * 114 + 112] - expected).mean() < 4  # JPEG noise only


def test_attention_view_of_the_query(server):
    status, headers, body = get(f"{server}/api/attention?" + urllib.parse.urlencode({"row": 0, "q": QUERY}))
    assert status == 200 and headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(body))
    assert image.width == 4 * 160 + 5 * 4  # four frames of 160 pixels; rows: the frames, the noun and verb questions
    assert image.height == 3 * (22 + 160) + 4


@pytest.mark.parametrize("path, status, says", [
    ("/api/search?q=", 400, "empty query"),
    ("/api/search?q=%20%20", 400, "empty query"),
    ("/api/search?q=" + "a" * 2000, 400, "2000 characters"),
    ("/api/search?q=dog&k=0", 400, "k must be between 1 and 100"),
    ("/api/search?q=dog&k=many", 400, "k: "),
    ("/api/similar?id=nowhere.mp4", 404, "no video with id 'nowhere.mp4'"),
    ("/api/similar?k=3", 400, "give the video as id=ID"),
    ("/api/video/100000", 404, "no video at row 100000"),
    ("/api/thumbnail/-1", 404, "no video at row -1"),
    ("/api/teapot", 404, "no API endpoint /api/teapot"),
])
def test_bad_requests_get_clear_json_errors(server, path, status, says):
    got, answer = get_json(server + path)
    assert got == status and says in answer["error"], answer
    assert get_json(f"{server}/api/info")[0] == 200  # still up


def test_a_moved_video_is_a_clear_error_while_the_rest_works(server, demo):
    ids = (demo["features"] / "video_ids.txt").read_text().splitlines()
    row = 7
    moved = Path(ids[row]).with_suffix(".moved")
    Path(ids[row]).rename(moved)
    try:
        for endpoint in ("video", "thumbnail"):
            status, answer = get_json(f"{server}/api/{endpoint}/{row}")
            assert status == 404 and f"video file {ids[row]} not found" in answer["error"]
        status, answer = get_json(f"{server}/api/similar?row={row}&k=100")
        assert status == 200 and len(answer["results"]) == len(ids) - 1
        status, answer = get_json(f"{server}/api/similar?row=0&k=100")
        (hit,) = [r for r in answer["results"] if r["row"] == row]
        assert hit["missing"] and all(not r["missing"] for r in answer["results"] if r["row"] != row)
    finally:
        moved.rename(ids[row])


def test_features_of_another_model_are_refused(demo, tmp_path, capsys):
    other = _tiny_model(tmp_path / "other", seed=1)
    capsys.readouterr()
    assert main(["serve", str(demo["features"]), "--model", str(other)]) == 2
    error = capsys.readouterr().err
    assert "holds embeddings of" in error and str(demo["model"]) in error and "not of" in error
    assert main(["search", str(demo["features"]), QUERY, "--model", str(other)]) == 2
    # a folder written before extract recorded the model is still served, with a warning that says so
    old = tmp_path / "old"
    shutil.copytree(demo["features"], old, ignore=shutil.ignore_patterns("thumbnails"))
    about = json.loads((old / "extract.json").read_text())
    del about["model_weights_sha256"]
    (old / "extract.json").write_text(json.dumps(about))
    collection = Collection(old, load_model(other))
    assert len(collection) == len(IdList(old / "video_ids.txt")) and "does not record which model" in \
        collection.warnings[0]


def test_a_video_folder_is_extracted_first_then_reused(demo, tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    for video in sorted(demo["videos"].iterdir())[:3]:
        shutil.copy(video, folder)
    args = type("Args", (), {"features": folder, "model": str(demo["model"]), "extract_to": None, "workers": 0,
                             "device": None, "tokenizer": None})()
    out = features_folder(args)
    assert out == tmp_path / "clips.features" and len(np.load(out / "video_embeddings.npy")) == 3
    assert "extracting" in capsys.readouterr().out
    assert features_folder(args) == out and "using the features" in capsys.readouterr().out


def test_id_list_reads_lines_by_row_and_finds_them(tmp_path):
    lines = ["a.mp4", "dir/a.mp4", "b.mp4", "ü é.mp4", "a.mp4x"]
    (tmp_path / "ids.txt").write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    ids = IdList(tmp_path / "ids.txt", block=7)  # blocks smaller than a line
    assert len(ids) == 5 and [ids[i] for i in range(5)] == lines
    assert [ids.row_of(x) for x in lines] == [0, 1, 2, 3, 4] and ids.row_of("a") is None


def test_token_bucket_allows_bursts_then_the_rate():
    now = [0.0]
    buckets = TokenBuckets(rate=2, burst=3, max_clients=2, clock=lambda: now[0])
    assert [buckets.take("x") for _ in range(3)] == [0, 0, 0]
    assert buckets.take("x") == pytest.approx(0.5)
    now[0] = 0.5
    assert buckets.take("x") == 0 and buckets.take("y") == 0
    buckets.take("z")  # a third client: the least recently seen ("x") is forgotten, and starts afresh
    assert [buckets.take("x") for _ in range(3)] == [0, 0, 0]


def _chromium():
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        message = ("the browser test needs Debian's chromium and chromium-driver; launch/test.sh installs them as "
                   "root (apt-get install chromium chromium-driver)")
        if os.environ.get("CI") or os.geteuid() == 0:
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_the_page_in_a_real_browser_shows_the_top_result(server, tmp_path_factory, monkeypatch):
    chromium, chromedriver = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    status, answer = get_json(search_url(server, QUERY, 20))
    expected = [r["id"] for r in answer["results"]]
    artifacts = Path(os.environ.get("MCQ_TEST_ARTIFACTS") or ARTIFACTS)
    artifacts.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for a browser or driver to download
    browser = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        browser.get(server + "/")
        wait = WebDriverWait(browser, 120)
        wait.until(lambda b: "videos" in b.find_element(By.ID, "about").text)
        box = browser.find_element(By.ID, "query")
        box.send_keys(QUERY, Keys.ENTER)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .result")) == 20)
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .result")
        assert [c.get_attribute("data-id") for c in cards] == expected
        assert cards[0].find_element(By.CSS_SELECTOR, ".rank").text == "#1"
        wait.until(lambda b: b.execute_script(
            "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
        screenshot = artifacts / "serve-search.png"
        browser.save_screenshot(str(screenshot))
        print(f"screenshot of the search page: {screenshot}")
        assert Image.open(screenshot).size[0] > 0
        cards[0].find_element(By.TAG_NAME, "img").click()  # plays the clip: the browser reads it through the API
        wait.until(lambda b: b.execute_script("const v = document.querySelector('#viewer video');"
                                              "return v !== null && v.readyState >= 1 && v.videoWidth > 0"))
        browser.find_element(By.ID, "viewer-close").click()
        box.clear()
        box.send_keys(" ", Keys.ENTER)  # an empty query: the page shows the API's message
        wait.until(lambda b: "empty query" in b.find_element(By.ID, "status").text)
    finally:
        browser.quit()


def test_a_flood_from_one_client_gets_429s_and_the_server_stays_up(server):
    """Runs last: it spends this client's budget. 200 requests on one kept-alive connection, bounded in time."""
    host, port = server.removeprefix("http://").split(":")
    time.sleep(BURST / RATE + 0.5)  # the earlier tests' requests are refilled: the flood starts on a full bucket
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    statuses, refused = [], None
    deadline = time.monotonic() + 60
    for _ in range(200):
        connection.request("GET", "/api/info")
        response = connection.getresponse()
        body = response.read()
        statuses.append(response.status)
        if response.status == 429:
            refused = (json.loads(body), response.getheader("Retry-After"))
        if time.monotonic() > deadline:
            break
    connection.close()
    assert statuses.count(200) >= BURST and statuses.count(429) > 0 and set(statuses) == {200, 429}
    assert "too many requests from 127.0.0.1" in refused[0]["error"] and int(refused[1]) >= 1
    time.sleep(BURST / RATE + 0.5)  # the bucket refills
    status, answer = get_json(search_url(server, QUERY, 3))
    assert status == 200 and len(answer["results"]) == 3
