"""CPU training in bf16 where the CPU has bf16 units: detected from the CPU flags, the training default there."""
import json

import torch

from mcq_ds.bench.model import default_dtype, main as bench_model
from mcq_ds.engine.config import DS_CONFIGS, default_ds_config
from mcq_ds.runtime import cpu_has_native_bf16

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\nbugs\t\t: sysret_ss_attrs\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx512f amx_bf16 amx_tile amx_int8\n"
ICE_LAKE = "flags\t\t: avx2 avx512f avx512_vnni avx512bw\nbugs\t\t: bf16_emulated_by_name_only\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16(ZEN4) and cpu_has_native_bf16(SAPPHIRE_RAPIDS)
    assert not cpu_has_native_bf16(ICE_LAKE)  # only the flags line counts
    assert not cpu_has_native_bf16("")


def test_training_and_the_model_benchmark_default_to_bf16_only_with_bf16_units():
    native = cpu_has_native_bf16()
    assert native == (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if not torch.cuda.is_available():
        name = default_ds_config()
        assert name == ("zero2_bf16.json" if native else "cpu_fp32.json")
        assert json.loads((DS_CONFIGS / name).read_text()).get("bf16", {}).get("enabled", False) == native
        assert default_dtype(torch.device("cpu")) == ("bf16" if native else "fp32")


def test_model_benchmark_reports_achieved_over_the_measured_peak(capsys, monkeypatch):
    monkeypatch.delenv("MCQ_ORIGINAL_REPO", raising=False)
    bench_model(["--preset", "tiny", "--frames", "1", "--batch", "1", "--steps", "1", "--warmup", "0",
                 "--device", "cpu"])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["peak_source"].startswith("measured") and record["peak_tflops"] > 0
    assert 0 < record["mfu"] <= 1 and record["dtype"] == default_dtype(torch.device("cpu"))
