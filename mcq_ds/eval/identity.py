"""Which model wrote a set of embeddings: a digest of its encoder weights, recorded by `mcq-ds extract` and checked
by `mcq-ds search` and `mcq-ds serve` before text queries embedded by MODEL are compared with those embeddings.

Embeddings of two models live in unrelated spaces: scores between them look like scores and mean nothing. The digest
covers the two encoders and their heads (not the BridgeFormer, which retrieval never runs) as fp32 values, so one
set of weights has one digest whichever form it was loaded from (model folder, DeepSpeed checkpoint, MCQ.pth).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .checkpoint import LoadedModel

BRIDGE_PREFIXES = ("bridge_model.", "bridge_proj.")
DIGEST_KEY = "model_weights_sha256"


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the retrieval weights' names, shapes and fp32 values, in name order."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if name.startswith(BRIDGE_PREFIXES):
            continue
        value = value.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(value.shape)};".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def check_same_model(features: Path, loaded: LoadedModel) -> str | None:
    """Raises ValueError when the embeddings in `features` were written by another model than `loaded`; returns a
    warning (None when all is well) for a folder too old to say which model wrote it."""
    record = features / "extract.json"
    about = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    recorded = about.get(DIGEST_KEY)
    if recorded is None:
        return (f"{features} does not record which model wrote it ({record.name} without {DIGEST_KEY}: written "
                f"before mcq-ds recorded it, or not by `mcq-ds extract`); its scores are only meaningful if "
                f"{loaded.path} made it. Rerun `mcq-ds extract` into a new folder to have this checked")
    if recorded != weights_digest(loaded.model):
        made_by = about.get("model", {}).get("path", "another model")
        raise ValueError(f"{features} holds embeddings of {made_by} (weights sha256 {recorded[:12]}…), not of "
                         f"{loaded.path}: scores between the two models mean nothing. Give --model the model that "
                         "wrote them, or extract the videos again with this model")
    return None
