"""`mcq-ds train`: one stage of the MCQ curriculum, or one benchmark fine-tuning stage, on a DeepSpeed ZeRO engine.

Run it directly on one machine (`mcq-ds train ...`) or under the DeepSpeed launcher across nodes
(`deepspeed --hostfile hosts --module mcq_ds.cli train ...`, see launch/). The loop is the whole story on one screen:
take the step's micro-batches of its source, embed, MCQ loss, backward, step (`train_step`); log; at an epoch's end
evaluate (fine-tuning); checkpoint.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..data.batch import Batch
from ..loss import MCQLoss, MCQLossOutput, answer_keys, mcq_choices
from ..model import create_model, create_tokenizer, load_pretrained, save_pretrained
from ..runtime import control_group, init_distributed, next_on_every_rank, pick_device, write_text_atomic
from ..tracking import Tracker
from . import checkpoints, optim, report
from .config import (ADJUSTABLE_KEYS, DS_CONFIGS, TrainConfig, config_changes, default_ds_config, describe_changes,
                     resolve, resume_on_purpose)
from .finetune import EpochEvaluation, consolidated_state, write_finetuned
from .memory import checkpointing_default
from .schedule import step_decay, warmup_cosine
from .stages import STAGES

log = logging.getLogger("mcq_ds.train")


def build_model(cfg: TrainConfig):
    """The stage's starting weights (the previous stage's export, `mcq-ds init`, or a released weight file) or a fresh
    preset model; a fine-tuning stage's without the BridgeFormer."""
    if cfg.init and Path(cfg.init).is_file():
        from ..model.released import from_weight_file

        model, tokenizer = from_weight_file(cfg.init, bridge=cfg.bridge, frames=cfg.frames)
    elif cfg.init:
        model, tokenizer = load_pretrained(cfg.init, bridge=None if cfg.bridge else False)
    else:
        from ..model.presets import preset

        model_cfg = preset(cfg.preset)
        model_cfg.video.num_frames = max(model_cfg.video.num_frames, cfg.frames)
        model, tokenizer = create_model(model_cfg), create_tokenizer(model_cfg)
    if cfg.frames > model.cfg.video.num_frames and getattr(model.cfg.video, "temporal_attention", False):
        raise ValueError(f"stage {cfg.stage} uses {cfg.frames} frames; the model in {cfg.init} takes at most "
                         f"{model.cfg.video.num_frames}")
    model.text_model.freeze_lower(cfg.frozen_text_layers)
    model.video_model.freeze_lower(cfg.frozen_video_blocks)
    return model, tokenizer


def compile_blocks(model: torch.nn.Module, **compile_kwargs) -> None:
    """`torch.compile` each transformer block of the video tower and the bridge (every block of a tower shares one
    graph; the bridge's first block, which has no stream yet, a second)."""
    for block in [*model.video_model.blocks, *getattr(model, "bridge_model", model.video_model).blocks]:
        block.compile(**compile_kwargs)


def compile_engine(engine) -> str:
    """ZeRO-3 gathers each submodule's weights in hooks around its forward: compiled block by block, every hooked
    module is a graph break, so there the engine compiles the whole model itself (`engine.compile()`, which
    DeepSpeed's hooks are written for). ZeRO 0-2 leave the forward alone: the blocks compile cleanly."""
    if engine.zero_optimization_stage() == 3:
        engine.compile()
        return "engine.compile() (ZeRO-3)"
    compile_blocks(engine.module)
    return "torch.compile per transformer block"


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """The JSON from mcq_ds/ds_configs/ as is, plus the values that depend on this run."""
    path = Path(cfg.ds_config) if cfg.ds_config else DS_CONFIGS / default_ds_config()
    if not path.is_file() and (DS_CONFIGS / path.name).is_file():
        path = DS_CONFIGS / path.name
    ds = json.loads(path.read_text())
    micro = cfg.micro_batch or cfg.global_batch // world_size
    accumulation = cfg.global_batch // (micro * world_size)
    if accumulation < 1 or accumulation * micro * world_size != cfg.global_batch:
        raise ValueError(f"global batch {cfg.global_batch} is not micro batch {micro} × {world_size} ranks × an "
                         "integer number of accumulation steps; change --micro-batch or --global-batch")
    ds.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accumulation,
              train_batch_size=cfg.global_batch)
    if "optimizer" in ds:  # the JSON's own optimizer: DeepSpeed builds it as written
        ds["optimizer"].setdefault("params", {}).update(lr=cfg.lr, eps=cfg.adam_eps)
    elif cfg.optimizer == "deepspeed":
        ds["optimizer"] = optim.deepspeed_section(cfg.lr, cfg.adam_eps)
    return ds


def steps_per_epoch(cfg: TrainConfig, epoch_steps: dict[str, int]) -> int:
    """Optimizer steps per epoch, from each source's optimizer steps per epoch (its loader's batches per epoch /
    accumulation). An epoch is one pass over the smallest source (the original's zipped loaders), with one optimizer
    step per source in turn, and at most `epoch_samples` samples per source when that is set."""
    per_source = min(epoch_steps[s] for s in cfg.sources)
    if cfg.epoch_samples:
        per_source = min(per_source, cfg.epoch_samples // cfg.global_batch)
    if per_source < 1:
        raise ValueError(f"a source of stage {cfg.stage} has fewer samples than one global batch ({cfg.global_batch})")
    return per_source * len(cfg.sources)


def steps_plan(cfg: TrainConfig, epoch_steps: dict[str, int]) -> tuple[int, list[int]]:
    """Total optimizer steps and the lr milestones in steps (see `steps_per_epoch`)."""
    per_epoch = steps_per_epoch(cfg, epoch_steps)
    total = cfg.max_steps or cfg.epochs * per_epoch
    return total, [m * per_epoch for m in cfg.milestones]


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """Optimizer groups: everything at --lr, or the text tower at --text-lr when one is set (the demo stages: a
    pre-trained text encoder beside a video tower trained from scratch, which needs a larger step)."""
    trained = [p for p in model.parameters() if p.requires_grad]  # not the text layers a stage keeps fixed
    if cfg.text_lr is None:
        return [{"params": trained}]
    text = {id(p) for p in model.text_model.parameters()}
    return [{"params": [p for p in trained if id(p) not in text]},
            {"params": [p for p in trained if id(p) in text], "lr": cfg.text_lr}]


def train_step(engine, loss_fn: MCQLoss, batches: list[Batch], global_negatives: bool = True,
               answers: torch.Tensor | None = None) -> MCQLossOutput:
    """One optimizer step over this rank's micro-batches `batches`; returns the loss terms (this rank's share, no
    graph: their mean over ranks is the step's loss). With `loss_fn.mcq_weight` 0 no question reaches the model
    (the dual encoder alone); otherwise `answers`, when given, gathers the MCQ answer accuracy (`_count_answers`).

    One micro-batch (the paper's setting), or `global_negatives=False`: forward, loss over the micro-batches of all
    ranks, backward, for each. With accumulation and `global_negatives`, every sample of the global batch is a
    negative for every other, as if the whole batch were one forward (GradCache, open_clip's --accum-freq): embed
    every micro-batch without a graph, compute the loss over all of them and its gradient with respect to the
    embeddings, then redo each micro-batch's forward with a graph and back-propagate those gradients. The torch
    RNG is rewound before each second forward, so dropout draws the same masks and the gradients are exact.
    """
    mcq = loss_fn.mcq_weight > 0

    def forward(batch: Batch) -> tuple[torch.Tensor, ...]:
        if not mcq:
            return tuple(engine(batch.video, batch.text))[:2]  # text and video: the BridgeFormer is not run
        embeddings = engine(batch.video, batch.text, batch.question, batch.answer)
        if answers is not None:
            _count_answers(answers, embeddings, batch)
        return tuple(e for e in embeddings if e is not None)  # no answer and bridge when fine-tuning

    if len(batches) == 1 or not global_negatives:
        terms = []
        for batch in batches:
            out = loss_fn(*forward(batch))
            engine.backward(out.loss)
            engine.step()
            terms.append(torch.stack(out).detach())
        return MCQLossOutput(*torch.stack(terms).mean(0))
    states, cached = [], []
    with torch.no_grad():
        for batch in batches:
            states.append(_dropout_rng())
            cached.append(forward(batch))
    answers = None  # counted once, in the pass above
    leaves = [torch.cat(parts).float().requires_grad_() for parts in zip(*cached)]
    out = loss_fn(*leaves)
    out.loss.backward()  # d(sum over ranks of their shares)/d(this rank's embeddings): the gather sums across ranks
    sizes = [len(batch) for batch in batches]
    grads = [leaf.grad.split(sizes) for leaf in leaves]
    for k, (batch, state) in enumerate(zip(batches, states)):
        _set_dropout_rng(state)
        embeddings = forward(batch)
        surrogate = sum((e.float() * g[k]).sum() for e, g in zip(embeddings, grads))
        # the embedding gradients already make the whole step's ∇ (× ranks, which the data-parallel mean removes):
        # no division by the accumulation steps
        engine.backward(surrogate, scale_wrt_gas=False)
        engine.step()
    return MCQLossOutput(*(t.detach() for t in out))


def _dropout_rng() -> tuple:
    """The generators dropout draws from: torch's CPU one and, with a GPU, the current device's."""
    return torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None


def _set_dropout_rng(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])


def make_loader(kind: str, loader_cfg, device: torch.device):
    """The reference (webdataset) or the DALI loader: both take the same config and yield the same `Batch`. DALI
    decodes on this rank's GPU (`device`), or on the CPU without one."""
    if kind == "torch":
        from ..data.loader import ShardLoader
        return ShardLoader(loader_cfg)
    if kind == "dali":
        if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
            raise ValueError("--loader dali needs NVIDIA DALI: pip install 'mcq-ds[dali]'")
        from ..data.dali import DaliLoader
        if device.type == "cuda":
            return DaliLoader(loader_cfg, device="mixed", device_id=device.index)
        return DaliLoader(loader_cfg, device="cpu")
    raise ValueError(f"--loader must be torch or dali, got '{kind}'")


def bind_run_folder(cfg: TrainConfig, resume_from: Path | None, on_purpose: bool) -> dict[str, tuple]:
    """A run folder belongs to one run. Refuses a command that would continue (or overwrite) the run in `cfg.out`
    with settings it was not made with, unless `--resume` was given on purpose and the settings may change within a
    run; returns those changes `{key: (old, new)}`, which then take effect from the resumed step."""
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if resume_from is None and cfg.resume is None and checkpoints.complete_checkpoints(ckpt_dir):
        raise ValueError(f"{ckpt_dir} holds checkpoints of a run; --resume none would start another run among them "
                         f"(and --resume latest would later mix the two): use another --out, or delete {ckpt_dir}")
    if resume_from is not None:
        saved, where = checkpoints.saved_config(resume_from), f"the checkpoint {resume_from}"
        newer = ", ".join(p.name for p in checkpoints.newer_checkpoints(ckpt_dir, resume_from))
        if newer:
            raise ValueError(f"{ckpt_dir} holds checkpoints newer than {resume_from} ({newer}); continuing from it "
                             "would leave them for --resume latest to take after the next crash: move them out of "
                             "the way first")
    elif (out / "model" / "config.json").is_file() and (out / "config.json").is_file():
        saved, where = json.loads((out / "config.json").read_text()), f"the finished run in {out}"
    else:
        return {}  # nothing of an earlier run to continue or to overwrite
    changes = config_changes(saved or {}, cfg)
    if not changes:
        return {}
    listing = describe_changes(changes)
    fixed = sorted(k for k in changes if k not in ADJUSTABLE_KEYS)
    if resume_from is not None and fixed:
        raise ValueError(f"{where} was made with other settings ({listing}). {', '.join(fixed)} cannot change "
                         "within a run (they made its weights, optimizer state and data position): use another "
                         "--out for a new run (its --init can be this run's export)")
    if not on_purpose:
        raise ValueError(f"{where} was made with other settings ({listing}). Use another --out for a new run; or "
                         "give --resume latest to continue this one with the new values from its last step "
                         f"(possible for {', '.join(sorted(ADJUSTABLE_KEYS))}); or delete {out} to start over")
    return changes


def train(cfg: TrainConfig, resume_on_purpose: bool = False) -> Path:
    """Runs the stage. `resume_on_purpose`: `--resume` was given on the command line, which lets a resume change
    the settings of `config.ADJUSTABLE_KEYS`."""
    import deepspeed

    from ..data.loader import LoaderConfig

    device = pick_device()  # first: every CUDA context, DALI pool and tensor below lands on this rank's GPU
    rank, world = init_distributed(device, always=True)  # a plain `mcq-ds train` is a 1-rank group
    control = control_group()
    on_gpu = device.type == "cuda"
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    resume_from = checkpoints.resolve_resume(ckpt_dir, cfg.resume)
    changes = bind_run_folder(cfg, resume_from, resume_on_purpose)
    if rank == 0:  # the config in effect from here on; also tells at once when OUT cannot be written
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    # a checkpoint of another folder starts a new tracking run; its tag name may exist here too, so load by path
    foreign = resume_from is not None and resume_from.parent.resolve() != ckpt_dir.resolve()
    if resume_from is not None:
        checkpoints.check_pickles(resume_from)  # before anything unpickles it
    torch.manual_seed(cfg.seed)  # the same initialisation on every rank and in every rerun
    model, tokenizer = build_model(cfg)
    ds = deepspeed_config(cfg, world)
    if cfg.grad_checkpointing is None:
        choice = checkpointing_default(model, ds, world, cfg.frames, device)
        cfg.grad_checkpointing, checkpointing = choice.enabled, choice.reason
    else:
        checkpointing = f"{'on' if cfg.grad_checkpointing else 'off'} (--grad-checkpointing)"
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    load_dir = resume_from.parent if resume_from is not None else None
    if resume_from is not None and checkpoints.saved_world_size(resume_from) != world \
            and ds.get("zero_optimization", {}).get("stage", 0) > 0:
        # ZeRO partitions depend on the world size: re-shard them
        load_dir = checkpoints.universal(resume_from, ckpt_dir / "universal")
        ds["checkpoint"] = {"load_universal": True}
    loaders = {source: make_loader(cfg.loader, device=device, loader_cfg=LoaderConfig(
        shards=cfg.data[source], source=source, num_frames=cfg.frames, img_size=model.cfg.video.img_size,
        batch_size=ds["train_micro_batch_size_per_gpu"], workers=cfg.workers, seed=cfg.seed, rank=rank,
        world_size=world, tokenizer=tokenizer, question_type=cfg.question_type, question_mode=cfg.question_mode,
        max_text_length=model.cfg.text.max_length, questions=cfg.bridge,
        normalisation=model.cfg.normalisation, hflip=cfg.hflip, max_skip_share=cfg.max_skip_share,
        frame_sampling=cfg.frame_sampling, antialias=cfg.train_resize == "antialias"))
        for source in cfg.sources}
    accumulation = ds["gradient_accumulation_steps"]
    epoch_steps = {s: loaders[s].batches_per_epoch // accumulation for s in cfg.sources}
    total_steps, milestones = steps_plan(cfg, epoch_steps)
    per_epoch = steps_per_epoch(cfg, epoch_steps)
    benchmark = STAGES[cfg.stage].benchmark
    evaluation = EpochEvaluation(cfg.eval_data, benchmark, cfg.frames, cfg.patience) if cfg.eval_data else None
    factor = step_decay(milestones) if cfg.schedule == "step" else warmup_cosine(cfg.warmup_steps, total_steps)
    groups = param_groups(model, cfg)
    optimizer = None if "optimizer" in ds else optim.torch_adamw(groups, cfg.lr, cfg.adam_eps)
    ops_before = report.loaded_deepspeed_ops()
    # DeepSpeed would set the device from LOCAL_RANK again; `device_rank` makes it take ours (the same GPU, or the one
    # GPU a per-task CUDA_VISIBLE_DEVICES leaves, which LOCAL_RANK would overshoot)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, model_parameters=groups, config=ds,
        args=argparse.Namespace(device_rank=device.index if on_gpu else int(os.environ["LOCAL_RANK"])),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor))
    facts = report.describe(engine, device, loaders, ops_before, checkpointing, "off", cfg.frames)
    if cfg.compile:  # after the report's forward, which runs without gradients: no graph is compiled for it
        facts["compile"] = compile_engine(engine)
    report.publish(facts, out)
    torch.manual_seed(cfg.seed + 1 + rank)  # dropout: reproducible, and different on every rank
    dtype = torch.bfloat16 if engine.bfloat16_enabled() else torch.float32

    step, run_id, run_key, saved_step = 0, None, None, None
    if resume_from is not None:
        with checkpoints.weights_only_loads():
            _, client = engine.load_checkpoint(str(load_dir), tag=resume_from.name)
        step = client["step"]
        if not foreign:  # the same training run goes on: the same MLflow run and record key, the same test scores
            run_id, run_key, saved_step = client.get("mlflow_run_id"), client.get("run_key"), step
            if evaluation is not None:
                evaluation.load_state_dict(client.get("evaluation", {"history": []}))
        if changes:
            _continue_with(engine, [cfg.lr] + ([cfg.text_lr] if cfg.text_lr is not None else []), factor)
        own = checkpoints.load_rank_state(resume_from, rank)
        if checkpoints.saved_world_size(resume_from) != world:
            # the data split depends on the world size: the loaders restart the saved epoch on the new split
            log.warning("resuming on %d ranks from a checkpoint written by %d: data restarts the current epoch on "
                        "the new split", world, checkpoints.saved_world_size(resume_from))
            own = {**checkpoints.load_rank_state(resume_from, 0), "rng": None}
        for source, loader in loaders.items():
            loader.load_state_dict(own["loaders"][source])
        if own["rng"] is not None:
            checkpoints.set_rng_state(own["rng"])  # the dropout stream continues where the saved run left it
        if rank == 0:
            log.info("resumed from %s at step %d", resume_from, step)
    iterators = {source: iter(loader) for source, loader in loaders.items()}

    out.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(cfg.mlflow_uri, cfg.experiment, cfg.run_name or cfg.stage, rank, out, run_id=run_id,
                      run_key=run_key)
    if rank == 0:
        if run_id is None:
            tracker.log_params({"train": cfg.to_dict(), "deepspeed": ds, "world_size": world})
            tracker.log_config("train_config.json", cfg.to_dict())
            tracker.log_config("deepspeed_config.json", ds)
        if foreign:
            tracker.set_tags({"resumed_from": str(resume_from.resolve())})
        if changes:
            listing = describe_changes(changes)
            log.warning("continuing from step %d with changed settings: %s", step, listing)
            tracker.set_tags({f"changed_at_step_{step}": listing})
            tracker.log_config(f"train_config_step{step:08d}.json", cfg.to_dict())

    if evaluation is not None and not evaluation.history:  # the starting point, for the record (no checkpoint)
        evaluation.evaluate(engine, tokenizer, 0, 0, tracker)
    loss_fn = MCQLoss(cfg.temperature, mcq_weight=cfg.mcq_weight)
    window = {"time": time.perf_counter(), "data": 0.0, "samples": 0, "steps": 0}
    # summed over the logging window, on the device (no host sync per step): loss, loss_vt, loss_mcq; and per
    # question kind (ANSWER_KINDS) the samples whose bridge picked their own answer, their chance, their count
    totals = torch.zeros(3, dtype=torch.float64, device=engine.device)
    answers = torch.zeros(len(ANSWER_KINDS), 3, dtype=torch.float64, device=engine.device)
    counters = {"skipped": 0, "no_phrase": 0}
    while step < total_steps and not (evaluation is not None and evaluation.should_stop()):
        source = cfg.sources[step % len(cfg.sources)]
        window["eps"] = optim.set_adam_eps(engine.optimizer, cfg.adam_eps, cfg.adam_eps_style, step + 1)
        batches = []
        for _ in range(accumulation):
            t0 = time.perf_counter()
            batches.append(next_on_every_rank(iterators[source], control).to(engine.device, dtype))
            window["data"] += time.perf_counter() - t0
            counters["skipped"] += batches[-1].skipped
            counters["no_phrase"] += sum(k == "none" for k in batches[-1].kinds) if cfg.bridge else 0
            window["samples"] += len(batches[-1])
        totals += torch.stack(train_step(engine, loss_fn, batches, cfg.negatives == "global",
                                         answers if cfg.mcq_weight and cfg.bridge else None)).double()
        step += 1
        window["steps"] += 1
        if step % cfg.log_every == 0 or step == total_steps:
            _log_window(engine, tracker, step, totals, answers if cfg.mcq_weight and cfg.bridge else None, window,
                        counters, cfg.bridge)
        evaluated = evaluation is not None and (step % per_epoch == 0 or step == total_steps)
        if evaluated:  # an epoch's end: its score, then its checkpoint (which carries the scores)
            evaluation.evaluate(engine, tokenizer, -(-step // per_epoch), step, tracker)
        if step % cfg.save_every == 0 or step == total_steps or evaluated:
            _save(engine, ckpt_dir, step, cfg, tracker, loaders, counters, evaluation)
            saved_step = step
    if saved_step != step:  # resumed at the last step from elsewhere: the export reads this folder's checkpoint
        _save(engine, ckpt_dir, step, cfg, tracker, loaders, counters, evaluation)
    if evaluation is not None and evaluation.should_stop() and step < total_steps and rank == 0:
        log.info("no better %s test score in %d evaluations: stopped early at step %d", benchmark, cfg.patience, step)
    chosen = (evaluation.best_tag_step if evaluation is not None else None) or step
    export = _export(engine, ckpt_dir, chosen, step, model.cfg, tokenizer, out, rank)
    if rank == 0:
        if benchmark:
            write_finetuned(export, benchmark, chosen, evaluation)
        tracker.log_artifacts(export, "model")
        if cfg.mlflow_uri != "none":  # also as an MLflow pyfunc model that predicts embeddings (mcq_ds/serve/pyfunc.py)
            from ..serve.pyfunc import log_pyfunc
            log_pyfunc(tracker, export, out / "mlflow-model")
    tracker.close()
    return export


ANSWER_KINDS = ("noun", "verb")


def _count_answers(answers: torch.Tensor, emb, batch) -> None:
    """Adds this micro-batch's MCQ answer accuracy counts per question kind to `answers` (see `totals`): each
    sample's pick among the answers of this micro-batch on every rank (the whole global batch without
    accumulation)."""
    choices = mcq_choices(emb.answer.detach(), emb.bridge.detach(), answer_keys(*batch.answer))
    for row, kind in enumerate(ANSWER_KINDS):
        mask = torch.tensor([k == kind for k in batch.kinds], device=answers.device)
        answers[row] += torch.stack([choices.correct[mask].sum(), choices.chance[mask].sum(), mask.sum()]).double()


def _log_window(engine, tracker, step, totals, answers, window, counters, mcq: bool = True) -> None:
    """Global-batch means of the loss terms over the window (no MCQ term when fine-tuning or with --mcq-weight 0),
    MCQ answer accuracy per question kind beside its chance level (in %; `answers` is None without MCQ),
    throughput, the data-wait share and counters."""
    world = dist.get_world_size()
    elapsed = time.perf_counter() - window["time"]
    stats = torch.cat([totals, torch.tensor([window["data"], window["samples"], counters["skipped"],
                                             counters["no_phrase"]], dtype=torch.float64, device=totals.device),
                       answers.flatten() if answers is not None else totals[:0]])
    dist.all_reduce(stats)  # on the engine's device: NCCL reduces GPU tensors only
    shares = window["steps"] * world  # one loss share per rank and step
    metrics = {
        "loss": stats[0].item() / shares, "loss_vt": stats[1].item() / shares, "loss_mcq": stats[2].item() / shares,
        "lr": engine.get_lr()[0], "adam_eps": window["eps"],
        "samples_per_second": stats[4].item() / elapsed,
        "samples_per_second_per_gpu": stats[4].item() / elapsed / world,
        "data_wait_share": stats[3].item() / world / elapsed, "skipped_samples": stats[5].item(),
        "no_phrase_samples": stats[6].item(),
    }
    if not mcq:
        del metrics["loss_mcq"], metrics["no_phrase_samples"]  # fine-tuning: no BridgeFormer, no questions
    elif answers is None:
        del metrics["loss_mcq"]  # not computed: the dual encoder alone
    else:
        for kind, (correct, chance, count) in zip(ANSWER_KINDS, stats[7:].view(-1, 3).tolist()):
            if count:
                metrics[f"mcq_accuracy_{kind}"] = 100 * correct / count
                metrics[f"mcq_chance_{kind}"] = 100 * chance / count
        answers.zero_()
    grad_norm = engine.get_global_grad_norm()
    if grad_norm is not None and math.isfinite(float(grad_norm)):
        metrics["grad_norm"] = float(grad_norm)
    if torch.cuda.is_available():
        metrics["memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    else:
        import resource
        metrics["memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    tracker.log_metrics(metrics, step)
    if dist.get_rank() == 0:
        terms = f"vt {metrics['loss_vt']:.4f}"
        if "loss_mcq" in metrics:
            terms += f", mcq {metrics['loss_mcq']:.4f}" + "".join(
                f", {k} answers {metrics[f'mcq_accuracy_{k}']:.0f}% (chance {metrics[f'mcq_chance_{k}']:.0f}%)"
                for k in ANSWER_KINDS if f"mcq_accuracy_{k}" in metrics)
        log.info("step %d  loss %.4f (%s)  lr %.2e  %.1f samples/s  data wait %.0f%%", step, metrics["loss"], terms,
                 metrics["lr"], metrics["samples_per_second"], 100 * metrics["data_wait_share"])
    totals.zero_()
    window.update(time=time.perf_counter(), data=0.0, samples=0, steps=0)


def _continue_with(engine, lrs: list[float], factor) -> None:
    """After a resume with changed settings: DeepSpeed restored the saved scheduler's base lrs and the optimizer's
    current lrs; the new lrs (one per group of `param_groups`) and schedule take over from this step."""
    scheduler = engine.lr_scheduler
    scheduler.base_lrs = list(lrs)
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr * factor(scheduler.last_epoch)


def _save(engine, ckpt_dir, step, cfg, tracker, loaders, counters, evaluation: EpochEvaluation | None) -> None:
    common = {"step": step, "stage": cfg.stage, "config": cfg.to_dict(), "mlflow_run_id": tracker.run_id,
              "run_key": tracker.run_key}
    keep = ()
    if evaluation is not None:  # the best epoch's checkpoint outlives --keep-last: it is the one exported
        common["evaluation"] = evaluation.state_dict()
        keep = (checkpoints.tag_for(evaluation.best_tag_step),) if evaluation.best else ()
    per_rank = {"loaders": {s: loader.state_dict() for s, loader in loaders.items()},
                "rng": checkpoints.rng_state(), "counters": dict(counters)}
    checkpoints.save(engine, ckpt_dir, step, common, per_rank, cfg.keep_last, keep)


def _export(engine, ckpt_dir, step, current, model_cfg, tokenizer, out, rank) -> Path:
    """fp32 weights of checkpoint `step` (a fine-tuning run's best epoch, else the last, `current`) as `<out>/model`
    (model.safetensors + config.json + tokenizer/), from the ZeRO master copy."""
    import deepspeed

    folder = out / "model"
    # Parameters a stage keeps fixed (--frozen-text-layers, --frozen-video-blocks) are outside the optimizer, and ZeRO
    # 1-2 checkpoints hold no fp32 copy of them; they never change, so they come from the model itself (gathered on
    # every rank at ZeRO-3).
    frozen = [(n, p) for n, p in engine.module.named_parameters() if not p.requires_grad]
    with deepspeed.zero.GatheredParameters([p for _, p in frozen], enabled=engine.zero_optimization_stage() == 3):
        fixed = {n: p.detach().float().cpu().clone() for n, p in frozen}
    if rank == 0:
        if engine.zero_optimization_stage() > 0 or step != current:
            with checkpoints.weights_only_loads():
                state = consolidated_state(engine, ckpt_dir, checkpoints.tag_for(step))
            state = {**fixed, **state}
        else:
            state = {k: v.float() for k, v in engine.module.state_dict().items()}
        model = create_model(model_cfg)
        model.load_state_dict(state, strict=True)
        save_pretrained(model, tokenizer, folder)
    dist.barrier()
    return folder


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    export = train(resolve(args), resume_on_purpose(args))
    if dist.get_rank() == 0:
        print(f"exported {export}")
    return 0
