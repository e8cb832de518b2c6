"""`mcq-ds serve` speed and memory at 10 k and 1 M videos: queries/s and latency of the search alone and through
the HTTP API (text encoding included), and the server's memory, each collection size in a fresh process.

    python -m mcq_ds.bench.serve --rows 10000 1000000 --queries 40

The collection is synthetic (random unit rows, the ids of paths that need not exist, written as `mcq-ds extract`
writes a folder, with the model's weight digest); the model is a preset with random weights (`base`: ViT-B/16 +
DistilBERT size, 256-d), which costs what trained weights cost. The real server (`create_app` under uvicorn) runs
in a thread of the measuring process, its rate limit out of the way; every HTTP query is a new text, so the query
cache never answers. Memory: RssAnon is the process's own memory (the model, Python, the ids' line offsets);
RssFile counts the pages of the memory-mapped embeddings the scans touched, which the kernel shares and can drop.
Prints one table row (and one JSON line) per size.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def random_unit_rows(path: Path, count: int, dim: int, seed: int = 0) -> None:
    """`count` random unit-length float32 rows into the .npy `path`, written in blocks (never all in memory)."""
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, dim))
    rng = np.random.default_rng(seed)
    for start in range(0, count, 1 << 18):
        block = rng.standard_normal((min(1 << 18, count - start), dim), dtype=np.float32)
        rows[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    rows.flush()
    del rows


def _memory() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)  # MiB
    return fields


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"median_ms": round(float(np.median(ms)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "queries_per_s": round(len(ms) / (ms.sum() / 1000), 2)}


def measure(rows: int, model_preset: str, queries: int, clients: int, work: Path) -> dict:
    import urllib.parse
    import urllib.request

    import torch
    import uvicorn

    from ..model.presets import preset
    from ..eval.checkpoint import LoadedModel
    from ..eval.data import ClipSpec
    from ..eval.identity import DIGEST_KEY, weights_digest
    from ..model import create_model, create_tokenizer
    from ..serve.app import create_app
    from ..serve.collection import Collection
    from ..serve.thumbnails import Thumbnails

    torch.manual_seed(0)
    cfg = preset(model_preset)
    cfg.bridge = False
    model = create_model(cfg).eval()
    loaded = LoadedModel(model, create_tokenizer(cfg), "preset", Path(model_preset))
    folder = work / f"features-{rows}"
    folder.mkdir(parents=True, exist_ok=True)
    random_unit_rows(folder / "video_embeddings.npy", rows, cfg.embed_dim)
    (folder / "video_ids.txt").write_text("".join(f"synthetic/video{i:07d}.mp4\n" for i in range(rows)))
    (folder / "extract.json").write_text(json.dumps({DIGEST_KEY: weights_digest(model), "frames": 4}))
    before = _memory()

    collection = Collection(folder, loaded)
    search_s = []
    vectors = np.random.default_rng(1).standard_normal((queries, cfg.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    collection.search(vectors[:1], 20)  # the first scan reads the file into the page cache: not timed
    for q in vectors:
        start = time.perf_counter()
        collection.search(q[None], 20)
        search_s.append(time.perf_counter() - start)

    app = create_app(collection, loaded, Thumbnails(work / "thumbnails", ClipSpec.of(model)), rate=1e9, burst=10**9)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def ask(n: int) -> float:
        url = f"http://127.0.0.1:{port}/api/search?" + urllib.parse.urlencode(
            {"q": f"query number {n}: a person is slicing {n % 97} tomatoes in a kitchen", "k": 20})
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=600) as response:
            assert response.status == 200 and len(json.loads(response.read())["results"]) == 20
        return time.perf_counter() - start

    ask(-1)
    http_s = [ask(n) for n in range(queries)]
    parallel = []
    start = time.perf_counter()
    workers = [threading.Thread(target=lambda c=c: parallel.extend(ask(queries + c * queries + n)
                                                                   for n in range(queries // clients)))
               for c in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    parallel_qps = len(parallel) / (time.perf_counter() - start)
    server.should_exit = True
    thread.join(timeout=30)
    return {"rows": rows, "dim": cfg.embed_dim, "model": model_preset, "torch_threads": torch.get_num_threads(),
            "search_only": _percentiles(search_s), "http_search": _percentiles(http_s),
            f"http_{clients}_clients_queries_per_s": round(parallel_qps, 2),
            "memory_mib_before_opening": before, "memory_mib_after": _memory(),
            "embeddings_file_mib": round((folder / "video_embeddings.npy").stat().st_size / 2 ** 20, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mcq_ds.bench.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000], help="collection sizes "
                        "(default: 10000 1000000)")
    parser.add_argument("--model", choices=["base", "tiny", "demo"], default="base",
                        help="model preset, random weights (default %(default)s)")
    parser.add_argument("--queries", type=int, default=40, help="timed queries per measurement (default 40)")
    parser.add_argument("--clients", type=int, default=4, help="HTTP clients at once for the parallel figure "
                        "(default 4)")
    parser.add_argument("--work-dir", type=Path, help="where the synthetic folders go (default: a temporary one)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a single size, in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.rows[0], args.model, args.queries, args.clients, args.work_dir)))
        return
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        print(f"{'rows':>9} {'search ms (median/p95)':>23} {'search q/s':>10} {'HTTP ms (median/p95)':>21} "
              f"{'HTTP q/s':>8} {f'{args.clients} clients q/s':>14} {'RssAnon MiB':>11} {'RssFile MiB':>11}")
        for rows in args.rows:
            done = subprocess.run([sys.executable, "-m", "mcq_ds.bench.serve", "--one", "--rows", str(rows),
                                   "--model", args.model, "--queries", str(args.queries), "--clients",
                                   str(args.clients), "--work-dir", work], capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"measuring {rows} rows failed:\n{done.stderr[-3000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            s, h, m = r["search_only"], r["http_search"], r["memory_mib_after"]
            print(f"{rows:>9} {s['median_ms']:>11.2f} / {s['p95_ms']:<9.2f} {s['queries_per_s']:>10.1f} "
                  f"{h['median_ms']:>9.1f} / {h['p95_ms']:<9.1f} {h['queries_per_s']:>8.1f} "
                  f"{r[f'http_{args.clients}_clients_queries_per_s']:>14.1f} {m['RssAnon']:>11.0f} "
                  f"{m['RssFile']:>11.0f}", flush=True)
            print(json.dumps(r), flush=True)
            for stale in Path(work).glob(f"features-{rows}/*"):
                stale.unlink()


if __name__ == "__main__":
    main()
