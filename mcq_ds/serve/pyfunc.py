"""An exported model as an MLflow pyfunc model: `mlflow.pyfunc.load_model(uri).predict(frame)` returns embeddings.

The input is a table with a `text` column (queries) and/or a `video` column (paths of video files the loading
machine can read), one of the two per row; the output is one L2-normalised float32 row per input row, in order,
the same vectors `mcq-ds extract` writes (videos: the segment-midpoint frames and the evaluation transform).

    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("runs:/RUN_ID/mlflow-model")   # or models:/NAME/VERSION once registered
    model.predict(pd.DataFrame({"text": ["a blue square is sinking"]}))            # (1, D)
    model.predict(pd.DataFrame({"video": ["clips/a.mp4", "clips/b.mp4"]}))         # (2, D)
    mlflow.register_model("runs:/RUN_ID/mlflow-model", "my-video-search")

`mcq-ds train` saves it as OUT/mlflow-model (the weights hard-linked to OUT/model where the file system allows) and
logs it to the run as the artifact `mlflow-model`. The model carries the code of mcq_ds and mcq_shards (MLflow's
code_paths), so loading it needs the listed PyPI packages, not an mcq-ds install.
"""
from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

ARTIFACT = "mlflow-model"
REQUIREMENTS = ("mlflow", "torch", "torchvision", "timm", "transformers", "tokenizers", "safetensors", "numpy",
                "pandas", "pillow", "av", "open_clip_torch", "ftfy")
_log = logging.getLogger(__name__)


class MCQEmbedder(mlflow.pyfunc.PythonModel):
    """Embeds texts and video files with the model folder logged as the artifact `model`."""

    def load_context(self, context) -> None:
        from ..eval.checkpoint import load_model
        from ..eval.data import ClipSpec
        from ..runtime import pick_device

        self.device = pick_device()
        self.loaded = load_model(context.artifacts["model"], bridge=False)
        self.loaded.model.to(self.device)
        self.spec = ClipSpec.of(self.loaded.model)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        import torch

        from ..eval.data import video_file_clip
        from ..eval.embed import embed_texts, embed_windows
        from ..loss import l2_normalise

        table = pd.DataFrame(model_input)
        texts = table["text"] if "text" in table else pd.Series([None] * len(table))
        videos = table["video"] if "video" in table else pd.Series([None] * len(table))
        has_text, has_video = texts.notna().to_numpy(), videos.notna().to_numpy()
        both_or_neither = np.flatnonzero(has_text == has_video)
        if len(both_or_neither):
            raise ValueError(f"row {both_or_neither[0]}: give exactly one of 'text' (a query) and 'video' (a video "
                             "file path) per row")
        out = np.zeros((len(table), self.loaded.model.cfg.embed_dim), np.float32)
        if has_text.any():
            out[has_text] = embed_texts(self.loaded.model, self.loaded.tokenizer, list(texts[has_text]), self.device)
        for row in np.flatnonzero(has_video):
            clips, _ = video_file_clip(videos.iloc[row], self.spec)  # a MediaError names the file and the problem
            mean = embed_windows(self.loaded.model, clips, torch.zeros(len(clips), dtype=torch.long), 1, self.device)
            out[row] = l2_normalise(mean).numpy()[0]
        return out


def signature(embed_dim: int):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([ColSpec("string", "text", required=False), ColSpec("string", "video", required=False)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, embed_dim), "embedding")]))


def _requirements() -> list[str]:
    pinned = []
    for package in REQUIREMENTS:
        try:
            pinned.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pass
    return pinned


def save_pyfunc(model_folder: Path, out: Path) -> Path:
    """Writes the MLflow model of the exported model folder `model_folder` into `out` (replacing an older one)."""
    from ..model import model_config_from_dict

    model_folder, out = Path(model_folder), Path(out)
    cfg = model_config_from_dict(json.loads((model_folder / "config.json").read_text()))
    code = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as staging:
        packages = []
        for package in ("mcq_ds", "mcq_shards"):
            shutil.copytree(code / package, Path(staging) / "code" / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            packages.append(str(Path(staging) / "code" / package))
        saved = Path(staging) / "model"
        with warnings.catch_warnings():  # the signature is given; an example would make saving run the model
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            mlflow.pyfunc.save_model(str(saved), python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                                     artifacts={"model": str(model_folder)}, signature=signature(cfg.embed_dim),
                                     code_paths=packages, pip_requirements=_requirements())
        _link_duplicates(model_folder, saved / "artifacts" / "model")
        if out.exists():
            shutil.rmtree(out)
        os.replace(saved, out)
    return out


def _link_duplicates(original: Path, copy: Path) -> None:
    """Replaces each file of `copy` that equals its counterpart in `original` by a hard link to it: the weights are
    stored once on disk."""
    for file in copy.rglob("*"):
        source = original / file.relative_to(copy)
        if file.is_file() and source.is_file() and filecmp.cmp(source, file, shallow=False):
            link = file.with_name(file.name + ".link")
            try:
                os.link(source, link)
            except OSError:  # another file system, or no hard links: keep the copy
                return
            os.replace(link, file)


def log_pyfunc(tracker, model_folder: Path, out: Path) -> None:
    """Saves the pyfunc model and logs it to the tracker's run as `mlflow-model`. A failure here costs a warning,
    never the training run that has just finished."""
    try:
        tracker.log_artifacts(save_pyfunc(model_folder, out), ARTIFACT)
    except Exception as error:  # noqa: BLE001 - the run's weights are already exported; say what is missing
        _log.warning("could not save the MLflow model of %s (%s: %s); %s still holds the exported model",
                     model_folder, type(error).__name__, error, model_folder)
