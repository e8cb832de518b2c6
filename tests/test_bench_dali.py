"""The loader benchmark runs end to end on CPU (real DALI, the reference loader and the original's OpenCV path),
so the one GPU check's DALI step and the README's loader table cannot rot unseen."""
import json

from mcq_ds.bench import dali


def test_loader_benchmark_measures_every_loader_and_workload(tmp_path, capsys):
    dali.main(["--work", str(tmp_path), "--device", "cpu", "--threads", "1", "--batch", "2", "--batches", "1",
               "--rounds", "1", "--warmup", "1", "--img-size", "64", "--clips", "2", "--seconds", "2",
               "--width", "160", "--height", "96", "--gop", "25", "--repeat", "2"])
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    measured = {(r["loader"], r["workload"]) for r in rows if r["frames_per_s"] > 0}
    assert measured == {(loader, workload) for loader in ("dali-cpu", "reference", "opencv-seek")
                        for workload in ("4-frame clips", "1-frame clips", "images")}
    assert all(r["host_step_us"] > 0 for r in rows if r["loader"] == "dali-cpu")
    assert "| 4-frame clips (frames/s) |" in out
