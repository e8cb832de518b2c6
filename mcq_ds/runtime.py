"""Where a process runs: its place in a distributed job, its device, and files written so a crash never leaves half.

One helper per idea, used by training, evaluation and the loaders alike:

* `distributed_position`: (rank, world size) without joining anything (the loaders' split);
* `init_distributed`: join the process group a launcher (`deepspeed`, `torchrun`) describes in the environment;
* `adopt_slurm_environment`: the same description from SLURM's variables, for processes `srun` started itself;
* `next_on_every_rank`: the next batch, or the same error on every rank;
* `local_device` / `pick_device`: the device of this rank, chosen once, before anything touches CUDA;
* `cpu_has_native_bf16`: whether this CPU multiplies bf16 in hardware (then CPU training runs in bf16);
* `atomic_write` / `write_text_atomic`: write beside the target and rename over it.

A launcher (`deepspeed`, `torchrun`, SLURM) starts one process per GPU and tells each its place on the machine in
`LOCAL_RANK`. Nothing else sets the CUDA device for us: `deepspeed.init_distributed` does not, and a loader, a DALI
pipeline or a tensor made on "cuda" before `torch.cuda.set_device` lands on GPU 0 (with 8 ranks: eight CUDA
contexts and eight DALI pools on one GPU, and copies between GPUs for the other seven). So every command calls
`pick_device()` first and hands the device it returns to everything it builds.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


def distributed_position(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the arguments when given, else torch.distributed's, else RANK/WORLD_SIZE, else (0, 1)."""
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            found = dist.get_rank(), dist.get_world_size()
        else:
            found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    return rank, world_size


def expand_nodelist(nodelist: str) -> list[str]:
    """The host names of a SLURM node list in its compressed form: `node[01-04,07]` → node01 … node04, node07;
    `a1,b[2-3]` → a1, b2, b3; several bracket groups (`rack[1-2]-n[1-2]`) expand as a product, zero padding kept."""
    hosts, depth, start = [], 0, 0
    for i, char in enumerate(nodelist + ","):
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            if nodelist[start:i]:
                hosts.extend(_expand_host(nodelist[start:i]))
            start = i + 1
    if depth != 0:
        raise ValueError(f"node list {nodelist!r} has unbalanced brackets")
    return hosts


def _expand_host(pattern: str) -> list[str]:
    if "[" not in pattern:
        return [pattern]
    head, rest = pattern.split("[", 1)
    ranges, tail = rest.split("]", 1)
    numbers = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        width = len(low)
        numbers += [f"{n:0{width}d}" for n in range(int(low), int(high or low) + 1)]
    return [head + n + t for n in numbers for t in _expand_host(tail)]


def adopt_slurm_environment(environ: MutableMapping[str, str] | None = None) -> bool:
    """Under `srun … mcq-ds train` (one task per GPU, no other launcher) there is no RANK/WORLD_SIZE/LOCAL_RANK/
    MASTER_ADDR: set them from SLURM's task variables, as a launcher would, and return True. The master is the first
    host of the step's node list, the port MASTER_PORT if set, else one derived from the job id (so two jobs sharing a
    node do not collide). Left alone (False): a process a launcher started (RANK set; `srun torchrun …` or `srun
    deepspeed …` included), and a shell outside a job step (no SLURM_PROCID)."""
    env = os.environ if environ is None else environ
    if "RANK" in env or "SLURM_PROCID" not in env:
        return False
    world = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not world or not nodes:
        raise RuntimeError("SLURM_PROCID is set but SLURM_NTASKS or SLURM_NODELIST is not: start the job with srun "
                           "(one task per GPU), or set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], world
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env.setdefault("MASTER_ADDR", expand_nodelist(nodes)[0])
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    return True


def init_distributed(device: torch.device, always: bool = False) -> tuple[int, int]:
    """(rank, world size) after joining the launcher's process group (NCCL on a GPU, gloo on the CPU).

    A plain command (no launcher, or WORLD_SIZE=1) needs no group and gets (0, 1), unless `always`: the DeepSpeed
    engine needs a group even alone, so it becomes a 1-rank group that listens on no network interface: torch's TCP
    store would listen on all of them whatever MASTER_ADDR says, so that group keeps its store in memory, and gloo
    (and NCCL) are pointed at the loopback interface unless the user chose one. A launcher's group of one (or
    RANK/WORLD_SIZE=1 inherited from a parent process) is made the same way: it has nobody to meet."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and not always:
        return 0, 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend)
        return dist.get_rank(), dist.get_world_size()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # DeepSpeed looks for a launcher's variables and, missing them, for MPI
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    loopback = _loopback_interface()
    if loopback:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return 0, 1


def _loopback_interface() -> str | None:
    import psutil

    return next((name for name, addresses in psutil.net_if_addrs().items()
                 if any(a.family == socket.AF_INET and a.address.startswith("127.") for a in addresses)), None)


def control_group() -> dist.ProcessGroup | None:
    """A process group for small host-side messages: the default group when it is gloo, else a gloo group beside
    it, so that a flag travels without touching (or synchronising with) a GPU. Collective: every rank calls it."""
    return None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def next_on_every_rank(iterator: Iterator, group: dist.ProcessGroup | None = None) -> Any:
    """`next(iterator)` on every rank, or the same error on every rank. A rank whose loader fails (most often
    `TooManySkips`: its shards are damaged) would otherwise leave the others waiting in the step's collectives until
    a timeout; here every rank learns of it at the same step, at the cost of one 4-byte all-reduce on the CPU."""
    try:
        item, failure = next(iterator), None
    except Exception as err:  # any loader failure: the other ranks must hear of it before they wait on this one
        item, failure = None, err
    flag = torch.tensor([failure is not None], dtype=torch.int32)
    dist.all_reduce(flag, group=group)
    if flag.item():
        messages: list = [None] * dist.get_world_size(group)
        mine = None if failure is None else f"rank {dist.get_rank()}: {type(failure).__name__}: {failure}"
        dist.all_gather_object(messages, mine, group=group)
        if failure is not None:
            raise failure
        raise RuntimeError("stopping: " + "; ".join(m for m in messages if m))
    return item


def local_device(environ: Mapping[str, str] | None = None, cuda_devices: int | None = None) -> torch.device:
    """This rank's device: GPU `LOCAL_RANK` when there are GPUs, the only GPU when the launcher gave each process
    one (`CUDA_VISIBLE_DEVICES` per task, as SLURM's `--gpus-per-task=1` does), else the CPU.

    `environ` and `cuda_devices` default to the process's environment and `torch.cuda.device_count()`.
    """
    environ = os.environ if environ is None else environ
    cuda_devices = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if cuda_devices == 0:
        return torch.device("cpu")
    local_rank = int(environ.get("LOCAL_RANK", 0))
    if cuda_devices == 1:
        return torch.device("cuda", 0)
    if not 0 <= local_rank < cuda_devices:
        raise RuntimeError(f"LOCAL_RANK={local_rank} but this process sees {cuda_devices} GPUs: start at most "
                           f"{cuda_devices} ranks per machine (e.g. `deepspeed --num_gpus {cuda_devices}`), or give "
                           "each rank its own GPU through CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", local_rank)


def pick_device(device: str | None = None) -> torch.device:
    """`device` if given, else `local_device()`; a GPU chosen is made this process's current CUDA device (call it
    before any CUDA context exists). A task `srun` started gets its launcher variables from SLURM's here."""
    adopt_slurm_environment()  # first: LOCAL_RANK decides the GPU
    chosen = torch.device(device) if device else local_device()
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    return chosen


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # Linux's names for AVX512-BF16 (Zen 4, Cooper Lake on) and AMX


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16 among the `flags` of
    /proc/cpuinfo, or `cpuinfo`'s text). With them oneDNN runs bf16 matrix products at about twice the fp32 rate;
    without them PyTorch emulates bf16 through fp32 and a bf16 step is slower than an fp32 one. Where there is no
    /proc/cpuinfo (not Linux), PyTorch's own CPU probe decides."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
            return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` writes the content to a temporary path beside `path`, which then replaces `path` in one rename:
    a reader (or a resumed run) sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
