"""One loader for every kind of checkpoint a user evaluates: what `mcq-ds eval`, `extract`, `search` and
`visualize` accept as MODEL.

* an exported model folder (`model.safetensors` + `config.json` + `tokenizer/`, e.g. a run's `OUT/model`);
* a DeepSpeed checkpoint written by `mcq-ds train`: the run folder `OUT` (its newest complete checkpoint), its
  `OUT/checkpoints` folder (the same), or one tag folder `OUT/checkpoints/stepNNNNNNNN`. ZeRO 1–3 checkpoints are
  consolidated into fp32 from the optimizer's master copy with DeepSpeed's `zero_to_fp32`; a ZeRO-0 checkpoint
  holds the weights themselves (`mp_rank_00_model_states.pt`, entry `module`). The architecture comes from the
  run's `OUT/model/config.json` when the run got that far, else from the training config stored in the checkpoint
  (its `--init` model folder, or its model preset);
* a released weight file: an original MCQ checkpoint (`MCQ.pth`, `MCQ_1frame.pth`), the MILES model (`MILES.pth`),
  `MCQ_CLIP.pth` or other CLIP weights in OpenAI's layout (any `.pth`/`.pt`/`.bin`/`.safetensors`), read without
  executing pickled code (`mcq_ds.model.released`).

DeepSpeed's consolidation reads its files with `weights_only=False`, so every pickle of the checkpoint is first
checked without unpickling it (`engine.checkpoints.check_pickles`: tensors, plain data and the three DeepSpeed
classes a ZeRO checkpoint holds, nothing else), and DeepSpeed's reads run weights-only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ..engine.checkpoints import check_pickles, complete_checkpoints, weights_only_loads
from ..model.presets import preset
from ..model import CLIPMCQ, MCQ, create_model, create_tokenizer, load_pretrained, model_config_from_dict
from ..model.loading import BRIDGE_PREFIXES
from ..model.released import from_weight_file
from ..model.weights_io import load_pickled

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@dataclass
class LoadedModel:
    model: MCQ | CLIPMCQ
    tokenizer: PreTrainedTokenizerBase
    kind: str  # "model folder", "deepspeed", "original"
    path: Path  # the file or folder the weights came from
    step: int | None = None  # the training step, for DeepSpeed checkpoints

    def describe(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "step": self.step,
                "bridge": hasattr(self.model, "bridge_model"),
                "max_frames": self.model.cfg.video.num_frames if getattr(self.model.cfg.video, "temporal_attention",
                                                                        False) else None}


def load_model(path: str | Path, bridge: bool = False, frames: int | None = None,
               tokenizer: str | None = None) -> LoadedModel:
    """The model behind `path`, in eval mode on the CPU. `bridge=False` drops the BridgeFormer (retrieval needs
    only the two encoders); `frames` is the run's frame count, checked against a temporal table when the model has
    one (MCQ has no frame-dependent parameter); `tokenizer` is only used for original checkpoints, which do not
    carry one."""
    path = Path(path)
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise ValueError(f"{path}: not a checkpoint; give a model folder, a training run or checkpoint folder, "
                             f"or an original MCQ weight file ({', '.join(WEIGHT_SUFFIXES)})")
        loaded = LoadedModel(*_original(path, bridge, frames, tokenizer), "original", path)
    elif (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        model, tok = load_pretrained(path, bridge=bridge)
        loaded = LoadedModel(model, tok, "model folder", path)
    elif path.is_dir():
        tag = deepspeed_tag(path)
        model, tok, step = _deepspeed(tag, bridge)
        loaded = LoadedModel(model, tok, "deepspeed", tag, step)
    else:
        raise FileNotFoundError(f"checkpoint not found: {path}")
    video = loaded.model.cfg.video
    if frames is not None and frames > video.num_frames and getattr(video, "temporal_attention", False):
        raise ValueError(f"{path}: this model's temporal table has {video.num_frames} frames; it cannot take {frames}")
    loaded.model.eval()
    return loaded


def _original(path: Path, bridge: bool, frames: int | None, tokenizer: str | None):
    try:
        return from_weight_file(path, bridge=bridge, frames=frames, tokenizer=tokenizer)
    except ValueError as err:
        if bridge and "no BridgeFormer" in str(err):
            raise ValueError(f"{err}. Attention maps need the BridgeFormer: use a pre-training checkpoint "
                             "(MCQ.pth holds it) or a model folder exported by `mcq-ds train`") from None
        raise


def deepspeed_tag(folder: Path) -> Path:
    """The tag folder to read: `folder` itself when it holds model states, else the newest complete checkpoint
    under `folder/checkpoints` or `folder`."""
    if any(folder.glob("*model_states.pt")):
        return folder
    for ckpt_dir in (folder / "checkpoints", folder):
        found = complete_checkpoints(ckpt_dir)
        if found:
            return found[-1]
    raise FileNotFoundError(f"{folder}: no model folder (config.json + model.safetensors), no DeepSpeed "
                            "checkpoint (*model_states.pt) and no complete checkpoint under checkpoints/; give a "
                            "run's OUT/model, OUT, or OUT/checkpoints/stepNNNNNNNN")


def _deepspeed(tag: Path, bridge: bool) -> tuple[MCQ | CLIPMCQ, PreTrainedTokenizerBase, int | None]:
    check_pickles(tag)
    states = sorted(tag.glob("*model_states.pt"))
    client = load_pickled(states[0])
    if any(tag.glob("*zero_pp_rank_*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with weights_only_loads():
            state = get_fp32_state_dict_from_zero_checkpoint(str(tag.parent), tag=tag.name)
    elif isinstance(client.get("module"), dict):
        state = client["module"]
    else:
        raise ValueError(f"{states[0]}: no 'module' weights and no ZeRO optimizer files; not a DeepSpeed checkpoint")
    cfg = _run_model_config(tag, client.get("config") or {})
    if not bridge:
        cfg.bridge = False
        state = {k: v for k, v in state.items() if not k.startswith(BRIDGE_PREFIXES)}
    elif not cfg.bridge:
        raise ValueError(f"{tag}: this run trained without a BridgeFormer; attention maps need one")
    model = create_model(cfg)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model, create_tokenizer(cfg), client.get("step")


def _run_model_config(tag: Path, train: dict):
    """The architecture a training run built (as `mcq-ds train` builds it): its export, its `--init` folder, or
    its preset with the stage's frame count; either model family."""
    run = tag.parent.parent
    for folder in (run / "model", Path(train["init"]) if train.get("init") else None):
        if folder is not None and (folder / "config.json").is_file():
            cfg = model_config_from_dict(json.loads((folder / "config.json").read_text()))
            if cfg.text.tokenizer and not Path(cfg.text.tokenizer).is_absolute():
                cfg.text.tokenizer = str(folder / cfg.text.tokenizer)
            return cfg
    if not train.get("preset"):
        raise ValueError(f"{tag}: cannot tell the model's architecture: no {run / 'model'}/config.json, and the "
                         "checkpoint's training config names neither an --init folder that still exists nor a preset")
    cfg = preset(train["preset"])
    cfg.video.num_frames = max(cfg.video.num_frames, train.get("frames") or 1)
    return cfg
