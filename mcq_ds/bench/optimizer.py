"""One AdamW step over N fp32 parameters on the CPU (what ZeRO-Offload runs every step): PyTorch's fused AdamW (the
default, `--optimizer torch`) against its per-tensor loop and DeepSpeed's CPU Adam (`--optimizer deepspeed`).

    python -m mcq_ds.bench.optimizer --params 50000000

Prints the best of `--repeats` steps for each, and how long DeepSpeed's CPU Adam took to build and load (a C++
compile the first time on a machine, unless DeepSpeed was installed with DS_BUILD_CPU_ADAM=1).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from ..engine.optim import ADAMW


def best_step_ms(optimizer_for, params: int, repeats: int) -> float:
    weights = torch.nn.Parameter(torch.randn(params))
    weights.grad = torch.randn(params)
    optimizer = optimizer_for([weights])
    optimizer.step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return round(1000 * min(times), 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=50_000_000, help="fp32 parameters (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps each (default %(default)s)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    result = {"params": args.params, "threads": torch.get_num_threads(),
              "torch_fused_ms": best_step_ms(lambda p: torch.optim.AdamW(p, lr=1e-4, fused=True, **ADAMW),
                                             args.params, args.repeats),
              "torch_for_loop_ms": best_step_ms(lambda p: torch.optim.AdamW(p, lr=1e-4, foreach=False, **ADAMW),
                                                args.params, args.repeats)}
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    start = time.perf_counter()
    result["deepspeed_cpu_adam_ms"] = best_step_ms(
        lambda p: DeepSpeedCPUAdam(p, lr=1e-4, adamw_mode=True, **ADAMW), args.params, args.repeats)
    result["deepspeed_cpu_adam_build_load_and_steps_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
