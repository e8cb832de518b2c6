"""Errors the user can fix get one line that names the file and says what to do, not a traceback: odd pickles
given to `mcq-ds convert-original`, and full or read-only outputs of train, eval and extract (real file systems:
a small tmpfs in a private mount namespace)."""
import torch
import pytest

from fs_fixtures import needs_mounts, run_on_tmpfs
from mcq_ds.cli import main
from mcq_ds.model import MCQ
from mcq_ds.model.loading import mcq_to_original
from test_engine import train_args
from test_model import tiny_config


def original_state(**replaced: torch.Tensor) -> dict[str, torch.Tensor]:
    """A tiny model's tensors under the original's names; `replaced` (by name prefix) get other values."""
    state = {"module." + k: v for k, v in mcq_to_original(MCQ(tiny_config()).state_dict()).items()}
    for prefix, value in replaced.items():
        state[next(k for k in state if k.startswith("module." + prefix))] = value
    return state


@pytest.mark.parametrize("name, content, says", [
    ("missing", lambda: {"state_dict": {"x": torch.zeros(1)}}, "no tensor 'video_model.pos_embed'"),
    ("numbered", lambda: {"state_dict": {1: torch.zeros(1)}}, "no state dict found"),
    ("shapes", lambda: {"state_dict": original_state(**{"video_model.pos_embed": torch.zeros(3)})},
     "not an original MCQ checkpoint"),
    ("mismatch", lambda: {"state_dict": original_state(text_proj=torch.zeros(5, 5))}, "size mismatch for text_proj"),
])
def test_odd_pickles_given_to_convert_original(tmp_path, capsys, name, content, says):
    path = tmp_path / f"{name}.pth"
    torch.save(content(), path)
    assert main(["convert-original", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and says in err, err
    assert not (tmp_path / "out" / "config.json").exists()


@needs_mounts
@pytest.mark.parametrize("options, says", [("ro", "read-only"), ("size=40m", "the disk is full")])
def test_train_into_a_full_or_read_only_folder(demo_shards, tmp_path, options, says):
    """Read-only: refused before the model is built. Full: the first checkpoint cannot be written."""
    out = tmp_path / "mnt/run"
    done = run_on_tmpfs(tmp_path / "mnt", options,
                        ["mcq_ds.cli", *train_args(demo_shards, out, "--max-steps", "1", "--save-every", "1")])
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"mcq-ds train: error: {out}" in done.stderr and says in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr


@needs_mounts
def test_eval_prints_its_metrics_before_failing_to_write_them(trained_run, demo_shards, tmp_path):
    out = tmp_path / "mnt/results.json"
    done = run_on_tmpfs(tmp_path / "mnt", "ro", ["mcq_ds.cli", "eval", str(trained_run / "model"),
                                                 str(demo_shards["msrvtt"]), "--out", str(out), "--workers", "0",
                                                 "--quiet"])
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "text->video" in done.stdout and "R@1" in done.stdout
    assert "read-only" in done.stderr and str(out.parent) in done.stderr and "Traceback" not in done.stderr


@needs_mounts
def test_extract_into_a_read_only_folder(trained_run, demo_shards, tmp_path):
    videos = demo_shards["msrvtt"].parent / "raw/msrvtt/videos/all"
    out = tmp_path / "mnt/feats"
    done = run_on_tmpfs(tmp_path / "mnt", "ro", ["mcq_ds.cli", "extract", str(trained_run / "model"), str(videos),
                                                 "-o", str(out), "--workers", "0"])
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{out}" in done.stderr and "read-only" in done.stderr and "Traceback" not in done.stderr
