"""`--compile`: the blocks compile to a fixed set of graphs whatever the batch's text lengths, and a compiled ZeRO-1
run on the real engine trains as the eager one does."""
import json
import random

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from mcq_ds.model.presets import preset
from mcq_ds.engine.train import compile_blocks
from mcq_ds.model import Tokens, create_model
from test_engine import finish, losses, mcq_ds, train_args


def test_blocks_compile_to_three_graphs_whatever_the_text_lengths():
    """One graph for every video block, one for the first bridge block (no stream yet), one for the other bridge
    blocks: question lengths, the batch's longest text (which sets the strides of the question states) and padding
    change from batch to batch without a recompile. Dynamo decides graphs and guards whatever the backend, so the
    cheap "eager" backend counts them."""
    torch._dynamo.reset()
    counters.clear()
    model = create_model(preset("tiny")).train()
    compile_blocks(model, backend="eager")
    rng = random.Random(0)

    def tokens(length: int) -> Tokens:
        mask = torch.ones(3, length, dtype=torch.long)
        mask[rng.randrange(3), length - rng.randint(1, 2):] = 0
        return Tokens(torch.randint(1000, 2000, (3, length)), mask)

    for _ in range(6):
        caption, question, answer = rng.randint(8, 20), rng.randint(8, 20), rng.randint(3, 8)
        out = model(torch.randn(3, 4, 3, 64, 64), tokens(caption), tokens(question), tokens(answer))
        sum(e.sum() for e in out).backward()
    assert counters["stats"]["unique_graphs"] == 3
    torch._dynamo.reset()


def test_compiled_zero1_training_matches_eager(demo_shards, tmp_path):
    steps = ["--max-steps", "2", "--save-every", "2", "--ds-config", "cpu_fp32.json"]  # ZeRO-1 in fp32 on any CPU
    eager = tmp_path / "eager"
    compiled = tmp_path / "compiled"
    finish(mcq_ds(*train_args(demo_shards, eager, *steps)))
    finish(mcq_ds(*train_args(demo_shards, compiled, *steps, "--compile")), timeout=1200)
    facts = json.loads((compiled / "runtime.json").read_text())["ranks"][0]
    assert facts["compile"] == "torch.compile per transformer block" and facts["zero_stage"] == 1
    a, b = losses(eager), losses(compiled)
    assert sorted(a) == sorted(b) == [1, 2]
    assert all(b[step] == pytest.approx(a[step], rel=1e-4) for step in a)
