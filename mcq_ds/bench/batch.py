"""Host-side cost of getting one training batch's video to the GPU: float batches (what the loaders shipped before)
against uint8 batches normalised on the device (what they ship now).

    python -m mcq_ds.bench.batch --batch 20 --frames 4 --size 224

Before: each worker normalised its clips into a float32 batch, the batch crossed worker IPC and pinning as float32,
and `Batch.to(device, bfloat16)` made PyTorch convert it on the host (into an unpinned temporary, copied
synchronously) on the training thread. Now: the worker stacks uint8 pixels (a quarter of the bytes), the pinned
copy is asynchronous, and the normalisation runs on the device (`data.batch.normalise`; timed here on the CPU only
to show its size, on a GPU it is one elementwise kernel). Worker steps run on one thread, as in a DataLoader worker.
Prints milliseconds per batch, the best of `--repeats` (the least disturbed by other jobs on the machine), and the
bytes each way moves.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from ..data.batch import NORMALISATION, normalise


def clips(batch: int, frames: int, size: int) -> list[torch.Tensor]:
    """uint8 clips as the workers' resize leaves them: (F, 3, S, S) views of channels-last storage."""
    return [torch.randint(0, 256, (frames, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
            for _ in range(batch)]


def float_batch(samples: list[torch.Tensor], name: str = "imagenet") -> torch.Tensor:
    """The former worker step: every clip normalised into one float32 batch, sample by sample."""
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALISATION[name])
    scale, shift = 1 / (255 * std), mean / std
    out = torch.empty((len(samples), *samples[0].shape), dtype=torch.float32)
    for frames, clip in zip(out, samples):
        frames.copy_(clip).mul_(scale).sub_(shift)
    return out


def uint8_batch(samples: list[torch.Tensor]) -> torch.Tensor:
    """The worker step now (`data.loader`): the clips copied, channels-last as they are, into one uint8 batch."""
    frames, channels, height, width = samples[0].shape
    out = torch.empty((len(samples), frames, height, width, channels), dtype=torch.uint8)
    for row, clip in zip(out, samples):
        row.copy_(clip.permute(0, 2, 3, 1))
    return out.permute(0, 1, 4, 2, 3)


def best_ms(fn, repeats: int, threads: int | None = None) -> float:
    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    try:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(default)
    return round(1000 * min(times), 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=20, help="samples per batch (default %(default)s)")
    parser.add_argument("--frames", type=int, default=4, help="default %(default)s")
    parser.add_argument("--size", type=int, default=224, help="frame side in pixels (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats (default %(default)s)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    samples = clips(args.batch, args.frames, args.size)
    floats, pixels = float_batch(samples), uint8_batch(samples)
    print(json.dumps({
        "batch": [args.batch, args.frames, 3, args.size, args.size], "threads": torch.get_num_threads(),
        "before_worker_normalise_ms": best_ms(lambda: float_batch(samples), args.repeats, threads=1),
        "before_training_thread_cast_to_bf16_ms": best_ms(lambda: floats.to(torch.bfloat16), args.repeats),
        "before_bytes_through_ipc_and_pinning": floats.nbytes,
        "now_worker_stack_ms": best_ms(lambda: uint8_batch(samples), args.repeats, threads=1),
        "now_bytes_through_ipc_pinning_and_pcie": pixels.nbytes,
        "now_device_normalise_to_bf16_ms_on_this_cpu": best_ms(
            lambda: normalise(pixels, "imagenet", torch.bfloat16), args.repeats),
    }))


if __name__ == "__main__":
    main()
