"""Each rank's device comes from LOCAL_RANK, and a batch is copied before it is converted."""
import pytest
import torch

from mcq_ds.data.batch import Batch, Tokens, normalise
from mcq_ds.runtime import local_device


def test_each_rank_takes_the_gpu_of_its_local_rank():
    assert [local_device({"LOCAL_RANK": str(r)}, cuda_devices=8) for r in range(8)] == \
        [torch.device("cuda", r) for r in range(8)]
    assert local_device({}, cuda_devices=8) == torch.device("cuda", 0)  # a plain single-process run
    # SLURM --gpus-per-task=1: each task sees only its own GPU, whatever its LOCAL_RANK
    assert local_device({"LOCAL_RANK": "5"}, cuda_devices=1) == torch.device("cuda", 0)
    assert local_device({"LOCAL_RANK": "5"}, cuda_devices=0) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="LOCAL_RANK=8 but this process sees 8 GPUs"):
        local_device({"LOCAL_RANK": "8"}, cuda_devices=8)


def test_uint8_batch_is_copied_then_normalised_in_float32_and_rounded_once():
    pixels = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8).permute(0, 1, 4, 2, 3)  # channels-last
    tokens = Tokens(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.long))
    batch = Batch(pixels, tokens, None, None, ["a", "b"], [], "test", normalisation="imagenet")
    fp32, bf16 = batch.to("cpu").video, batch.to("cpu", torch.bfloat16).video
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert fp32.dtype == torch.float32 and fp32.is_contiguous()
    assert torch.allclose(fp32, (pixels.float() / 255 - mean) / std, atol=1e-6)
    assert torch.equal(bf16, fp32.to(torch.bfloat16))  # one rounding, from the float32 values
    assert torch.equal(normalise(pixels, "imagenet"), fp32) and batch.video.dtype == torch.uint8
    assert batch.to("cpu").normalisation is None  # normalised once: moving it again leaves it alone
    again = batch.to("cpu").to("cpu", torch.bfloat16).video
    assert torch.equal(again, bf16)
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise(pixels, "laion")
