"""The tracker against a real `mlflow server` process, the server-less default store, a closed
port, a server that hangs mid-run, and ranks other than 0.

One server serves the whole module: it takes about 20 s to come up, so it is started before the
first test and the tests that need no server run while it boots.
"""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mcq_ds.cli import main
from mcq_ds.tracking import RECORD, Tracker

REPO = Path(__file__).resolve().parents[1]
GIT_TAG = "mlflow.source.git.commit"


@dataclass
class Server:
    uri: str
    process: subprocess.Popen


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _events(local_dir: Path) -> list[dict]:
    """The local record, without the git-commit tag event that only a git checkout writes."""
    events = [json.loads(line) for line in (local_dir / RECORD).read_text().splitlines()]
    return [e for e in events if e.get("tags", {}).keys() != {GIT_TAG}]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name == "mcq_ds.tracking" and r.levelno == logging.WARNING
    ]


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module", autouse=True)
def _server_process(tmp_path_factory):
    """Start the server as the module begins (the first tests need none, and it boots meanwhile)."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root}/server.db",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with (root / "server.log").open("w") as log:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    yield Server(f"http://127.0.0.1:{port}", process)
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def server(_server_process: Server) -> Server:
    """The module's server, once it answers /health."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert _server_process.process.poll() is None, "mlflow server exited; see server.log"
        try:
            with urllib.request.urlopen(f"{_server_process.uri}/health", timeout=2) as response:
                if response.status == 200:
                    return _server_process
        except OSError:
            time.sleep(0.5)
    pytest.fail("mlflow server did not come up within 180 s")


def test_none_uri_keeps_only_the_local_record_and_never_imports_mlflow(tmp_path):
    code = (
        "import sys\n"
        "from mcq_ds.tracking import Tracker\n"
        "with Tracker('none', 'e', None, 0, sys.argv[1]) as tracker:\n"
        "    tracker.log_metrics({'loss': 1.5}, step=3)\n"
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, check=True)
    events = _events(tmp_path)
    assert [e["event"] for e in events] == ["start", "metrics", "close"]
    assert events[1]["step"] == 3 and events[1]["metrics"] == {"loss": 1.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD]


def test_default_store_needs_no_server_and_stays_in_local_dir(tmp_path, monkeypatch):
    cwd, local = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with Tracker(None, "local", "run-f", 0, local) as tracker:
        tracker.log_params({"data": {"frames": 4}})
        for step in (1, 2):
            tracker.log_metrics({"train/loss": 2.0 / step}, step)
        tracker.log_config("config.yaml", {"data": {"frames": 4}})

    client = MlflowClient(f"sqlite:///{local}/mlflow.db")
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"data.frames": "4"}
    assert _history(client, tracker.run_id, "train/loss") == [(1, 2.0), (2, 1.0)]
    [config] = (local / "mlartifacts").rglob("config.yaml")
    assert config.read_text() == "data:\n  frames: 4\n"
    assert list(cwd.iterdir()) == []


def test_unreachable_server_warns_once_and_keeps_every_event(tmp_path, caplog):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    tracker = Tracker(uri, "offline", "run-c", 0, tmp_path)
    tracker.log_params({"a": {"b": 1}})
    for step in range(3):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step)
    tracker.set_tags({"stage": "noun"})
    tracker.close("FAILED")
    elapsed = time.monotonic() - start

    assert elapsed < 30, f"a dead server cost {elapsed:.1f} s"
    [warning] = _warnings(caplog)
    assert uri in warning and "mcq-ds tracking-replay" in warning
    assert tracker.run_id is None
    events = _events(tmp_path)
    assert [e["event"] for e in events] == ["start", "params", *["metrics"] * 3, "tags", "close"]
    assert events[1]["params"] == {"a.b": "1"}
    assert [(e["step"], e["metrics"]["loss"]) for e in events[2:5]] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert events[-1]["status"] == "FAILED"


def test_server_round_trip(server, tmp_path, caplog):
    tracker = Tracker(server.uri, "roundtrip", "run-a", 0, tmp_path / "out")
    tracker.log_params({"optimizer": {"lr": 1e-4, "betas": [0.9, 0.98]}, "note": "x" * 7000})
    for step in (0, 10, 20):
        tracker.log_metrics({"train/loss": 5.0 - step / 10, "t2v/R@1": step}, step)
    tracker.set_tags({"stage": 1})
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    tracker.log_artifact(notes)
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "attention.png").write_bytes(b"png")
    tracker.log_artifacts(plots, "figures")
    tracker.log_config("config.json", {"model": {"frames": 4}, "out": tmp_path})
    tracker.close()

    client = MlflowClient(server.uri)
    run = client.get_run(tracker.run_id)
    assert (run.info.status, run.info.run_name) == ("FINISHED", "run-a")
    assert run.data.params == {
        "optimizer.lr": "0.0001", "optimizer.betas": "[0.9, 0.98]", "note": "x" * 6000,
    }
    assert _history(client, tracker.run_id, "train/loss") == [(0, 5.0), (10, 4.0), (20, 3.0)]
    assert _history(client, tracker.run_id, "t2v/R_1") == [(0, 0.0), (10, 10.0), (20, 20.0)]
    assert _warnings(caplog) == ["'t2v/R@1' is not a valid MLflow name; logging it as 't2v/R_1'"]
    assert run.data.tags["stage"] == "1"
    git = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert run.data.tags.get(GIT_TAG) == (git.stdout.strip() if git.returncode == 0 else None)
    artifacts = sorted(a.path for a in client.list_artifacts(tracker.run_id))
    assert artifacts == ["config.json", "figures", "notes.txt"]
    assert [a.path for a in client.list_artifacts(tracker.run_id, "figures")] == ["figures/attention.png"]
    config = client.download_artifacts(tracker.run_id, "config.json", str(tmp_path))
    assert json.loads(Path(config).read_text()) == {"model": {"frames": 4}, "out": str(tmp_path)}
    kinds = [e["event"] for e in _events(tmp_path / "out")]
    assert kinds == [
        "start", "params", *["metrics"] * 3, "tags", "artifact", "artifacts", "config", "close",
    ]


@pytest.mark.parametrize(("error", "status"), [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_an_exception_in_the_with_block_ends_the_run_with_its_status(server, tmp_path, error, status):
    with pytest.raises(error), Tracker(server.uri, "status", None, 0, tmp_path) as tracker:
        raise error
    assert MlflowClient(server.uri).get_run(tracker.run_id).info.status == status


def test_resume_appends_to_the_same_run(server, tmp_path, caplog):
    first = Tracker(server.uri, "resume", "run-b", 0, tmp_path)
    first.log_params({"lr": 0.1})
    for step in (0, 1):
        first.log_metrics({"loss": 1.0 / (step + 1)}, step)
    # The process dies here without close(); the engine restarts from its checkpoint.
    second = Tracker(server.uri, "resume", "run-b", 0, tmp_path, run_id=first.run_id)
    assert second.run_id == first.run_id
    assert MlflowClient(server.uri).get_run(first.run_id).info.status == "RUNNING"
    second.log_params({"lr": 0.05, "epochs": 3})
    second.log_metrics({"loss": 0.25}, 2)
    second.close()

    client = MlflowClient(server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert run.info.run_id == first.run_id and run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "epochs": "3"}
    assert _history(client, first.run_id, "loss") == [(0, 1.0), (1, 0.5), (2, 0.25)]
    [warning] = _warnings(caplog)
    assert "lr keep their first values" in warning


def test_resume_of_a_run_the_server_lacks_starts_a_new_run(server, tmp_path, caplog):
    missing = "0123456789abcdef0123456789abcdef"
    with Tracker(server.uri, "moved", "run-g", 0, tmp_path, run_id=missing) as tracker:
        tracker.log_metrics({"loss": 1.0}, 7)
    assert tracker.run_id != missing
    assert _history(MlflowClient(server.uri), tracker.run_id, "loss") == [(7, 1.0)]
    [warning] = _warnings(caplog)
    assert missing in warning and "starting a new run" in warning


def test_server_hanging_mid_run_costs_one_warning_and_no_events(server, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # a user's setting wins over ours
    tracker = Tracker(server.uri, "hang", "run-e", 0, tmp_path)
    tracker.log_metrics({"loss": 1.0}, 0)
    os.killpg(server.process.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        for step in (1, 2):
            tracker.log_metrics({"loss": 1.0 / (step + 1)}, step)
        tracker.close()
        elapsed = time.monotonic() - start
    finally:
        os.killpg(server.process.pid, signal.SIGCONT)
    assert elapsed < 30, f"a hung server cost {elapsed:.1f} s"
    [warning] = _warnings(caplog)
    assert server.uri in warning
    events = _events(tmp_path)
    assert [e.get("step") for e in events if e["event"] == "metrics"] == [0, 1, 2]
    assert events[-1]["event"] == "close"


def test_replay_pushes_a_record_into_a_server(server, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    local = tmp_path / "out"
    for steps in ((0, 1), (2, 3)):  # one run, resumed once, tracked with no MLflow at all
        tracker = Tracker("none", "replayed", "run-d", 0, local, run_id="from-checkpoint")
        tracker.log_params({"lr": 0.1})
        for step in steps:
            tracker.log_metrics({"loss": float(step)}, step)
    tracker.log_artifact(notes)
    tracker.close()

    assert main(["tracking-replay", str(local), server.uri]) == 0

    client = MlflowClient(server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("replayed").experiment_id])
    run_id = run.info.run_id
    assert capsys.readouterr().out.splitlines()[-1] == run_id
    assert (run.info.status, run.info.run_name, run.data.params) == ("FINISHED", "run-d", {"lr": "0.1"})
    recorded = {e["step"]: e["time_ms"] for e in _events(local) if e["event"] == "metrics"}
    history = client.get_metric_history(run_id, "loss")
    assert {m.step: (m.value, m.timestamp) for m in history} == {
        step: (float(step), time_ms) for step, time_ms in recorded.items()
    }
    assert [a.path for a in client.list_artifacts(run_id)] == ["notes.txt"]


def test_rank_one_writes_nothing(server, tmp_path):
    local = tmp_path / "rank1"
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with Tracker(server.uri, "rank1", "run-h", 1, local) as tracker:
        tracker.log_params({"lr": 0.1})
        tracker.log_metrics({"loss": 1.0}, 0)
        tracker.set_tags({"stage": "noun"})
        tracker.log_config("config.json", {"lr": 0.1})
        tracker.log_artifact(notes)
        tracker.log_artifacts(tmp_path)
    assert not local.exists()
    assert MlflowClient(server.uri).get_experiment_by_name("rank1") is None


def test_training_run_is_visible_in_a_real_mlflow_server(server, demo_shards, tmp_path, monkeypatch):
    """`mcq-ds train --mlflow-uri http://127.0.0.1:PORT`: config, metrics and the exported model reach the server."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mcq_ds.cli", "train", "--stage", "demo-1f-noun", "--preset", "tiny",
               "--data", f"cc3m={demo_shards['cc3m']}", "--data", f"webvid={demo_shards['webvid']}",
               "--out", str(out), "--global-batch", "8", "--workers", "1", "--log-every", "1", "--max-steps", "2",
               "--save-every", "2", "--no-hflip", "--mlflow-uri", server.uri, "--experiment", "engine-test"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("engine-test").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.stage"] == "demo-1f-noun" and run.data.params["world_size"] == "1"
    assert "mlflow.source.git.commit" in run.data.tags
    for key in ("loss", "loss_vt", "loss_mcq", "lr", "samples_per_second", "samples_per_second_per_gpu",
                "data_wait_share", "skipped_samples", "memory_gib"):
        assert [step for step, _ in _history(client, run.info.run_id, key)] == [1, 2], key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"train_config.json", "deepspeed_config.json", "model"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} >= {"model/model.safetensors",
                                                                              "model/config.json"}
    # the exported model is also an MLflow pyfunc model: registered by name and loaded back, it embeds texts
    import mlflow
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    version = mlflow.register_model(f"runs:/{run.info.run_id}/mlflow-model", "mcq-ds-engine-test")
    model = mlflow.pyfunc.load_model(f"models:/mcq-ds-engine-test/{version.version}")
    assert model.predict(pd.DataFrame({"text": ["a red square is moving"]})).shape == (1, 64)


def test_replay_of_a_resumed_run_with_a_torn_line_and_a_moved_artifact(server, trained_run, demo_shards, tmp_path,
                                                                       capsys):
    """A real training run tracked without MLflow, its record torn at the end (a full disk), then resumed: replay
    makes one MLflow run of both segments, skips and reports the torn line, and names the artifact that is gone."""
    from test_engine_safety import linked_copy, run_train

    out = linked_copy(trained_run, tmp_path / "run")
    record = out / RECORD
    record.write_bytes(record.read_bytes()[:-20])  # the first segment's last event, cut short
    done = run_train(demo_shards, out, "--resume", "latest", "--max-steps", "4")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (out / "model").rename(out / "model-moved")

    assert main(["tracking-replay", str(out), server.uri]) == 1
    captured = capsys.readouterr()
    [run_id] = [line for line in captured.out.splitlines() if re.fullmatch(r"[0-9a-f]{32}", line)]  # one run
    lines = record.read_text().splitlines()
    torn = next(n for n, line in enumerate(lines, start=1) if not line.endswith("}"))
    assert "skipped 1 torn line(s)" in captured.err and f"lines {torn}" in captured.err
    assert f"artifact {(out / 'model').resolve()} no longer exists" in captured.err
    client = MlflowClient(server.uri)
    assert [step for step, _ in _history(client, run_id, "loss")] == [1, 2, 3, 4]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.stage"] == "demo-1f-noun"
