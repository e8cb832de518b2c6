"""`mcq-ds serve`: search a video collection by text in a web page.

    mcq-ds serve FEATURES --model MODEL          then open http://127.0.0.1:8000/

FEATURES is a folder written by `mcq-ds extract` (embeddings + ids), or a folder of videos: then it is extracted
first into FOLDER.features (resumable: rerun the same command after a crash), or into --extract-to.

The page (static files in `mcq_ds/serve/static`, no build step) shows the best matches of a query as a grid of the
frames the model saw with their cosine scores; a click plays the clip; "similar" searches by that video's
embedding; "attention" draws the BridgeFormer's cross-attention of the query's noun and verb phrases over the clip
(when MODEL has its BridgeFormer). The JSON API behind it:

    GET /api/info                          the collection, the model, the limits, warnings
    GET /api/search?q=TEXT&k=20            text → videos: rank, row, id, score, path, video and thumbnail URLs
    GET /api/similar?id=ID&k=20            video → videos (or row=N), the video itself left out
                                           (both also as /search and /similar)
    GET /api/video/ROW                     the video file (HTTP range requests, so players can seek)
    GET /api/thumbnail/ROW                 JPEG of the frames the model saw
    GET /api/attention?row=ROW&q=TEXT      PNG of the BridgeFormer attention of the query's phrases

Every error is JSON, {"error": "what went wrong and what to do"}, with a 4xx status; each client address gets a
token bucket of requests (--rate a second, bursts of --burst): past it, 429 with Retry-After.
The search is the exact chunked scan of `mcq-ds search` over the memory-mapped embeddings (or a FAISS index with
--faiss), so memory stays flat whatever the collection's size.
"""
from __future__ import annotations

import argparse
import functools
import io
import ipaddress
import mimetypes
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mcq_shards.media import MediaError

from ..eval.checkpoint import LoadedModel, load_model
from ..eval.data import ClipSpec
from ..eval.embed import embed_texts
from ..runtime import pick_device
from .collection import Collection
from .ratelimit import TokenBuckets
from .thumbnails import Thumbnails

if TYPE_CHECKING:
    from fastapi import FastAPI

STATIC = Path(__file__).with_name("static")
SHORT_PATHS = ("/search", "/similar")  # the same as /api/search and /api/similar


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(collection: Collection, loaded: LoadedModel, thumbnails: Thumbnails, device: torch.device | str = "cpu",
               max_k: int = 100, max_query_chars: int = 1000, rate: float = 20.0, burst: int = 60) -> FastAPI:
    """The FastAPI application over one collection and the model that wrote it (also used by the benchmark)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    app = FastAPI(title="mcq-ds search", docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)
    buckets = TokenBuckets(rate, burst)
    model_lock = threading.Lock()  # one forward pass at a time: attention hooks are per model, and the CPU is shared
    has_bridge = hasattr(loaded.model, "bridge_model")

    @functools.cache
    def phrase_parser():
        from mcq_shards.phrases import PhraseParser

        return PhraseParser()

    @app.middleware("http")
    async def limit_each_client(request: Request, call_next):
        if request.url.path.startswith("/api/") or request.url.path in SHORT_PATHS:
            client = request.client.host if request.client else "unknown"
            wait = buckets.take(client)
            if wait:
                return JSONResponse({"error": f"too many requests from {client}: at most {rate:g} a second in bursts "
                                     f"of {burst}; retry in {wait:.1f} s"}, status_code=429,
                                    headers={"Retry-After": str(max(1, round(wait)))})
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in err.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        return JSONResponse({"error": f"internal error ({type(err).__name__}: {err}); the server is still up"},
                            status_code=500)

    @functools.lru_cache(maxsize=1024)
    def embed_query(text: str) -> np.ndarray:
        with model_lock:
            return embed_texts(loaded.model, loaded.tokenizer, [text], device)

    def checked_query(q: str | None) -> str:
        text = (q or "").strip()
        if not text:
            raise ApiError(400, "empty query: type a few words that describe the video you are looking for")
        if len(text) > max_query_chars:
            raise ApiError(400, f"the query is {len(text)} characters long; the limit is {max_query_chars} "
                           "(mcq-ds serve --max-query-chars); a short description works best")
        return text

    def checked_k(k: int) -> int:
        if not 1 <= k <= max_k:
            raise ApiError(400, f"k must be between 1 and {max_k} (mcq-ds serve --max-k), got {k}")
        return min(k, len(collection))

    def checked_row(row: int) -> int:
        if not 0 <= row < len(collection):
            raise ApiError(404, f"no video at row {row}: the collection has rows 0 to {len(collection) - 1}")
        return row

    def result(rank: int, row: int, score: float) -> dict:
        path = collection.video_path(row)
        return {"rank": rank, "row": row, "id": collection.ids[row], "score": round(score, 6), "path": str(path),
                "missing": not path.is_file(), "video": f"/api/video/{row}", "thumbnail": f"/api/thumbnail/{row}"}

    def results(query: np.ndarray, k: int, leave_out: int | None = None) -> tuple[list[dict], float]:
        start = time.perf_counter()
        hits = collection.search(query, k + (leave_out is not None))
        found = [(int(r), float(s)) for r, s in zip(hits.rows[0], hits.scores[0]) if r >= 0 and r != leave_out]
        return [result(n, r, s) for n, (r, s) in enumerate(found[:k], 1)], time.perf_counter() - start

    @app.get("/api/info")
    def info() -> dict:
        return {"videos": len(collection), "features": str(collection.folder), "model": loaded.describe(),
                "embed_dim": int(collection.embeddings.shape[1]), "frames": thumbnails.spec.num_frames,
                "attention": has_bridge, "search": collection.method,
                "warnings": collection.warnings,
                "limits": {"max_k": max_k, "max_query_chars": max_query_chars, "rate": rate, "burst": burst}}

    @app.get("/api/search")
    @app.get("/search", include_in_schema=False)
    def search(q: str | None = None, k: int = 20) -> dict:
        text, k = checked_query(q), checked_k(k)
        start = time.perf_counter()
        query = embed_query(text)
        encoded = time.perf_counter() - start
        found, searched = results(query, k)
        return {"query": text, "k": k, "seconds": {"encode": round(encoded, 4), "search": round(searched, 4)},
                "results": found}

    @app.get("/api/similar")
    @app.get("/similar", include_in_schema=False)
    def similar(id: str | None = None, row: int | None = None, k: int = 20) -> dict:
        if (id is None) == (row is None):
            raise ApiError(400, "give the video as id=ID (a line of video_ids.txt) or row=N, one of the two")
        if id is not None:
            row = collection.ids.row_of(id)
            if row is None:
                raise ApiError(404, f"no video with id {id!r} in {collection.folder}")
        row, k = checked_row(row), checked_k(k)
        query = np.asarray(collection.embeddings[row:row + 1], dtype=np.float32)
        found, searched = results(query, k, leave_out=row)
        return {"query": {"row": row, "id": collection.ids[row]}, "k": k, "seconds": {"search": round(searched, 4)},
                "results": found}

    def existing_video(row: int) -> Path:
        path = collection.video_path(checked_row(row))
        if not path.is_file():
            raise ApiError(404, f"video file {path} not found: it was moved or deleted after extraction; put it "
                           "back, or extract the folder again")
        return path

    @app.get("/api/video/{row}")
    def video(row: int):
        path = existing_video(row)
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    @app.get("/api/thumbnail/{row}")
    def thumbnail(row: int):
        path = existing_video(row)
        try:
            picture = thumbnails.get(path)
        except MediaError as err:
            raise ApiError(422, f"{path} cannot be decoded: {err}") from None
        return FileResponse(picture, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/attention")
    def attention(row: int, q: str | None = None):
        from ..eval.visualize import attention_figure

        text = checked_query(q)
        if not has_bridge:
            raise ApiError(409, f"{loaded.path} has no BridgeFormer (a retrieval-only model), so it has no "
                           "attention to show; serve a pre-training model (a run's OUT/model, MCQ.pth) to see it")
        path = existing_video(row)
        with model_lock:
            phrases = phrase_parser().parse([text])[0]
            nouns, verbs = [p["text"] for p in phrases["nouns"][:2]], [p["text"] for p in phrases["verbs"][:1]]
            if not nouns and not verbs:
                raise ApiError(422, f"no noun or verb phrase found in {text!r}: the attention view masks a phrase "
                               "of the query, as in pre-training; try a sentence such as 'a red ball is rolling'")
            try:
                figure = attention_figure(loaded, path, text, nouns, verbs, frames=thumbnails.spec.num_frames,
                                          cell=160, device=str(device))
            except ValueError as err:
                raise ApiError(422, str(err)) from None
        png = io.BytesIO()
        figure.image.save(png, format="PNG")
        return Response(png.getvalue(), media_type="image/png")

    @app.get("/api/{rest:path}")
    def unknown(rest: str):
        raise ApiError(404, f"no API endpoint /api/{rest}; see /api/docs")

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="page")
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("features", type=Path, help="a folder written by `mcq-ds extract`, or a folder of videos to "
                        "extract first")
    parser.add_argument("--model", required=True, help="the model that wrote FEATURES (it embeds the queries): a "
                        "model folder, a training run or DeepSpeed checkpoint, or MCQ.pth")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine "
                        "only; 0.0.0.0 opens the page and the video files to the network)")
    parser.add_argument("--port", type=int, default=8000, help="default %(default)s")
    parser.add_argument("--extract-to", type=Path, metavar="DIR", help="where a video folder's features go "
                        "(default: FEATURES.features beside it)")
    parser.add_argument("--thumbnail-cache", type=Path, metavar="DIR",
                        help="where rendered thumbnails are kept (default: FEATURES/thumbnails, or a temporary "
                        "folder when FEATURES is read-only)")
    parser.add_argument("--faiss", metavar="FACTORY", help="search a FAISS index of this factory string instead of "
                        "the exact scan (as `mcq-ds search --faiss`; needs faiss-cpu or faiss-gpu)")
    parser.add_argument("--max-k", type=int, default=100, help="most results a request may ask for (default "
                        "%(default)s)")
    parser.add_argument("--max-query-chars", type=int, default=1000, help="longest query accepted (default "
                        "%(default)s characters)")
    parser.add_argument("--rate", type=float, default=20.0, help="API requests a second each client may make on "
                        "average (default %(default)s)")
    parser.add_argument("--burst", type=int, default=60, help="API requests a client may make at once (default "
                        "%(default)s: one search page asks for a thumbnail per result)")
    parser.add_argument("--no-attention", action="store_true", help="load MODEL without its BridgeFormer (less "
                        "memory; no attention view)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes when a video folder is extracted "
                        "first (default %(default)s)")
    parser.add_argument("--tokenizer", help="tokenizer for an original .pth checkpoint")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info",
                        help="the web server's log level (default %(default)s)")


def features_folder(args: argparse.Namespace) -> Path:
    """FEATURES itself when it holds embeddings, else the features of the video folder FEATURES, extracted first."""
    from ..eval import extract

    folder: Path = args.features
    if (folder / "video_embeddings.npy").is_file():
        return folder
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder; give a folder written by `mcq-ds extract` or a folder of "
                                "videos")
    out = args.extract_to or folder.with_name(folder.name + ".features")
    if (out / "video_embeddings.npy").is_file() and not (out / extract.PARTS).exists():
        print(f"using the features in {out} (delete it to extract {folder} again, e.g. after adding videos)")
        return out
    print(f"{folder} holds no embeddings: extracting its videos into {out} first (resumable)")
    parser = argparse.ArgumentParser()
    extract.add_arguments(parser)
    options = [args.model, str(folder), "-o", str(out), "--workers", str(args.workers)]
    options += ["--device", args.device] if args.device else []
    options += ["--tokenizer", args.tokenizer] if args.tokenizer else []
    extract.run(parser.parse_args(options))
    return out


def open_model(args: argparse.Namespace) -> LoadedModel:
    """MODEL with its BridgeFormer when it has one (for the attention view), else the retrieval model alone."""
    if args.no_attention:
        return load_model(args.model, bridge=False, tokenizer=args.tokenizer)
    try:
        return load_model(args.model, bridge=True, tokenizer=args.tokenizer)
    except ValueError as err:  # no BridgeFormer in it; any other problem raises again below
        loaded = load_model(args.model, bridge=False, tokenizer=args.tokenizer)
        print(f"note: {err}; serving without the attention view")
        return loaded


def thumbnail_cache(args: argparse.Namespace, features: Path) -> Path:
    chosen = args.thumbnail_cache or features / "thumbnails"
    try:
        chosen.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=chosen)
        probe.close()
        return chosen
    except OSError as err:
        if args.thumbnail_cache:
            raise ValueError(f"--thumbnail-cache {chosen}: cannot write there ({err})") from None
        fallback = Path(tempfile.mkdtemp(prefix="mcq-ds-thumbnails-"))
        print(f"note: {chosen} is not writable ({err.strerror}); thumbnails are cached in {fallback}")
        return fallback


def run(args: argparse.Namespace) -> int:
    import uvicorn

    for name in ("max_k", "max_query_chars", "burst"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    device = pick_device(args.device)
    features = features_folder(args)
    loaded = open_model(args)
    loaded.model.to(device)
    collection = Collection(features, loaded, args.faiss)
    for warning in collection.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    spec = ClipSpec.of(loaded.model, collection.about.get("frames"))
    thumbnails = Thumbnails(thumbnail_cache(args, features), spec)
    app = create_app(collection, loaded, thumbnails, device, args.max_k, args.max_query_chars, args.rate, args.burst)
    if not _is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can search the collection and "
              "download its video files", file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {len(collection)} videos of {features} with {loaded.path} at http://{host}:{args.port}/",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
