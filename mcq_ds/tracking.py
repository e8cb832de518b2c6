"""Experiment tracking for training and evaluation: MLflow on rank 0, backed by a local record.

Every rank calls the same methods and only rank 0 acts, so the loop needs no rank checks. Each
event is first appended to ``<local_dir>/tracking.jsonl`` and then sent to MLflow. A tracking
server that is down or goes away therefore costs one warning and no data: training goes on, and
the record can be pushed into MLflow later with :func:`replay`
(``mcq-ds tracking-replay LOCAL_DIR URI``).

Tracking URIs:

- ``None``: a server-less MLflow store, ``<local_dir>/mlflow.db``, with artifacts in
  ``<local_dir>/mlartifacts`` (MLflow's own default writes both into the current directory);
- ``"none"``: the local record only; MLflow is never imported (importing it takes seconds);
- anything else (``http://host:5000``, ``sqlite:///path.db``): handed to MLflow as is.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    TYPE_CHECKING, Any, Callable, Concatenate, Literal, Mapping, ParamSpec, TextIO,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

_log = logging.getLogger(__name__)

RECORD = "tracking.jsonl"

# MLflow retries a failed request 7 times with exponential backoff, each try with a 120 s
# timeout: a server that is gone would stall a training step for minutes. MLflow reads these
# variables at every request and has no per-client setting, so they are process-wide; a value
# the user has set wins.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

# MLflow's limits (mlflow.utils.validation), copied so that the "none" path need not import
# mlflow. MLflow rejects names with other characters, which would end tracking for the run.
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_NOT_IN_NAMES = re.compile(r"[^/\w.\- :]")

Status = Literal["FINISHED", "FAILED", "KILLED"]
P = ParamSpec("P")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested configs as dotted keys, because MLflow params are flat and compared by key."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _git_commit() -> str | None:
    """The commit of this checkout, so that a run names the code it ran; None when not in git."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():  # an installed copy: a git repo above it is not its source
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _mlflow_client(uri: str | None, local_dir: Path) -> tuple[MlflowClient, str | None]:
    """A client for ``uri`` and the artifact location for experiments it creates (None: MLflow's)."""
    for name, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow.tracking import MlflowClient

    if uri is None:
        local_dir = local_dir.resolve()
        return MlflowClient(f"sqlite:///{local_dir}/mlflow.db"), (local_dir / "mlartifacts").as_uri()
    if uri.startswith("sqlite:///"):  # a shared local store (e.g. every stage of the demo): artifacts beside it
        return MlflowClient(uri), (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return MlflowClient(uri), None


def _open_run(
    client: MlflowClient,
    experiment: str,
    run_name: str | None,
    run_id: str | None,
    start_ms: int,
    artifact_location: str | None,
) -> tuple[str, dict[str, str]]:
    """Continue ``run_id`` if the store has it, else start a new run; returns its id and params."""
    from mlflow.exceptions import MlflowException

    if run_id is not None:
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id, dict(client.get_run(run_id).data.params)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            _log.warning("MLflow run %s is not in %s; starting a new run", run_id, client.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id if found else client.create_experiment(experiment, artifact_location)
    )
    return client.create_run(experiment_id, start_time=start_ms, run_name=run_name).info.run_id, {}


def _apply(client: MlflowClient, run_id: str, event: dict[str, Any], logged: dict[str, str]) -> None:
    """Send one record event to an MLflow run: live tracking and replay share it, so they agree.

    ``logged`` holds the run's params: MLflow refuses to change a param, so a changed value (say,
    a new learning rate after a resume) keeps its first value in MLflow instead of failing.
    """
    from mlflow.entities import Metric, Param, RunTag

    kind = event["event"]
    if kind == "params":
        changed = sorted(k for k, v in event["params"].items() if logged.get(k, v) != v)
        if changed:
            _log.warning(
                "MLflow params cannot change within a run: %s keep their first values in MLflow; "
                "the new values are in the local record", ", ".join(changed),
            )
        new = {k: v for k, v in event["params"].items() if k not in logged}
        if new:
            client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()])
            logged.update(new)
    elif kind == "metrics":
        metrics = [Metric(k, v, event["time_ms"], event["step"]) for k, v in event["metrics"].items()]
        client.log_batch(run_id, metrics=metrics)
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in event["tags"].items()])
    elif kind == "config":
        client.log_dict(run_id, event["config"], event["name"])
    elif kind == "artifact":
        client.log_artifact(run_id, event["path"], event["artifact_path"])
    elif kind == "artifacts":
        client.log_artifacts(run_id, event["path"], event["artifact_path"])
    elif kind == "close":
        client.set_terminated(run_id, event["status"], event["time_ms"])


def _active_only(
    method: Callable[Concatenate[Tracker, P], None],
) -> Callable[Concatenate[Tracker, P], None]:
    """Make a method a no-op on ranks other than 0 and after close()."""

    @functools.wraps(method)
    def run_if_active(self: Tracker, *args: P.args, **kwargs: P.kwargs) -> None:
        if self._record is not None:
            method(self, *args, **kwargs)

    return run_if_active


class Tracker:
    """Rank-0 experiment tracking that never stops training.

    Construct it on every rank with the same arguments. ``run_id`` continues an MLflow run after a
    restart, and ``run_key`` the run in the local record (store :attr:`run_id` and :attr:`run_key`
    in the checkpoint: a run tracked without MLflow has no run id, and its replay must still make
    one run of all its segments). The first MLflow failure of any kind logs one warning and ends
    MLflow traffic for this process, because every later call would wait for the same dead server;
    the local record keeps every event.
    """

    def __init__(
        self,
        uri: str | None,
        experiment: str,
        run_name: str | None,
        rank: int,
        local_dir: str | Path,
        run_id: str | None = None,
        run_key: str | None = None,
    ) -> None:
        self._uri = uri
        self._local_dir = Path(local_dir)
        self._run_id = run_id
        self._run_key = run_key or run_id or uuid.uuid4().hex
        self._client: MlflowClient | None = None
        self._params: dict[str, str] = {}
        self._renamed: set[str] = set()
        self._record: TextIO | None = None
        if rank != 0:
            return
        self._local_dir.mkdir(parents=True, exist_ok=True)
        if uri != "none":
            try:
                self._client, artifact_location = _mlflow_client(uri, self._local_dir)
                self._run_id, self._params = _open_run(
                    self._client, experiment, run_name, run_id, _now_ms(), artifact_location
                )
            except Exception as error:
                self._fail(error)
        self._record = _open_record(self._local_dir / RECORD)
        self._emit("start", experiment=experiment, run_name=run_name, uri=uri, run_id=self._run_id,
                   run_key=self._run_key)
        commit = _git_commit()
        if commit:
            self.set_tags({"mlflow.source.git.commit": commit})

    @property
    def run_id(self) -> str | None:
        """The MLflow run id to store in checkpoints (on other ranks: the one passed in)."""
        return self._run_id

    @property
    def run_key(self) -> str:
        """The run's id in the local record, to store in checkpoints (on other ranks: meaningless)."""
        return self._run_key

    @_active_only
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log hyper-parameters; nested mappings become dotted keys (``optimizer.lr``)."""
        flat = self._valid_names(_flatten(params))
        self._emit("params", params={k: str(v)[:_MAX_PARAM_VALUE] for k, v in flat.items()})

    @_active_only
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalars at a global step; values may be 0-d tensors (only rank 0 converts them)."""
        metrics = self._valid_names(metrics)
        self._emit("metrics", step=int(step), metrics={k: float(v) for k, v in metrics.items()})

    @_active_only
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (mutable, unlike params): node count, stage, data version."""
        tags = self._valid_names(tags)
        self._emit("tags", tags={k: str(v)[:_MAX_TAG_VALUE] for k, v in tags.items()})

    @_active_only
    def log_config(self, name: str, config: Mapping[str, Any]) -> None:
        """Store a whole config as the artifact ``name`` (.json, .yaml or .yml decides the format).

        Params are flat and truncated; this keeps the exact config a run can be restarted from.
        """
        self._emit("config", name=name, config=json.loads(json.dumps(config, default=str)))

    @_active_only
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file (or a directory, as one folder) now; meant for small files, not checkpoints."""
        self._emit("artifact", path=str(Path(path).resolve()), artifact_path=artifact_path)

    @_active_only
    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        """Upload the contents of ``directory`` into ``artifact_path`` of the run."""
        self._emit("artifacts", path=str(Path(directory).resolve()), artifact_path=artifact_path)

    @_active_only
    def close(self, status: Status = "FINISHED") -> None:
        """End the run with ``status``; later calls are no-ops."""
        self._emit("close", status=status)
        self._record.close()
        self._record = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    def _valid_names(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        """Replace characters MLflow refuses in names (``t2v/R@1`` -> ``t2v/R_1``), warning once."""
        valid = {}
        for name, value in mapping.items():
            new = _NOT_IN_NAMES.sub("_", name)
            if new != name and name not in self._renamed:
                self._renamed.add(name)
                _log.warning("%r is not a valid MLflow name; logging it as %r", name, new)
            valid[new] = value
        return valid

    def _emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time_ms": _now_ms(), **fields}
        self._record.write(json.dumps(record) + "\n")
        if self._client is not None:
            try:
                _apply(self._client, self._run_id, record, self._params)
            except Exception as error:  # whatever MLflow raises, training must go on
                self._fail(error)

    def _fail(self, error: Exception) -> None:
        self._client = None
        _log.warning(
            "MLflow tracking at %s failed (%s: %s). Training goes on without MLflow and keeps "
            "every event in %s. Check that the tracking server is up and reachable, then push "
            "the record with: mcq-ds tracking-replay %s %s",
            self._uri or f"sqlite:///{self._local_dir}/mlflow.db", type(error).__name__, error,
            self._local_dir / RECORD, self._local_dir, self._uri or "URI",
        )


def _open_record(path: Path) -> TextIO:
    """The record, for appending. A write cut short (full disk, kill -9) leaves a line without its
    newline; the next event must not be glued to it, or both would be lost."""
    with path.open("ab") as raw:
        if raw.tell() > 0:
            with path.open("rb") as last:
                last.seek(-1, os.SEEK_END)
                if last.read(1) != b"\n":
                    raw.write(b"\n")
    return path.open("a", buffering=1)


@dataclass
class Replayed:
    """What :func:`replay` did: the MLflow runs it made, and what it could not send."""

    runs: list[str] = field(default_factory=list)
    torn_lines: list[int] = field(default_factory=list)  # 1-based lines that are not a whole event
    orphan_lines: list[int] = field(default_factory=list)  # events before any run's start
    missing_artifacts: list[str] = field(default_factory=list)  # recorded paths that no longer exist


def replay(local_dir: str | Path, uri: str | None) -> Replayed:
    """Push a local record into MLflow, e.g. one written while the server was down.

    Each run in the record becomes a new MLflow run with the original steps and times; the
    segments of a resumed run share a run key and become one run. A torn line (a write cut short)
    is skipped; an artifact whose recorded path no longer exists is not uploaded. Both are
    reported in the result, so nothing is left out silently.
    """
    local_dir = Path(local_dir)
    client, artifact_location = _mlflow_client(uri, local_dir)
    runs: dict[str, tuple[str, dict[str, str]]] = {}
    done, current = Replayed(), None
    with (local_dir / RECORD).open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                event = json.loads(line)
                kind = event["event"]
            except (ValueError, TypeError, KeyError):
                if line.strip():
                    done.torn_lines.append(number)
                continue
            if kind == "start":
                key = event.get("run_key") or event["run_id"] or f"line {number}"
                if key not in runs:
                    run_id, _ = _open_run(
                        client, event["experiment"], event["run_name"], None, event["time_ms"],
                        artifact_location,
                    )
                    runs[key] = (run_id, {})
                current = runs[key]
            elif current is None:
                done.orphan_lines.append(number)
            elif kind in ("artifact", "artifacts") and not Path(event["path"]).exists():
                done.missing_artifacts.append(event["path"])
            else:
                _apply(client, current[0], event, current[1])
    done.runs = [run_id for run_id, _ in runs.values()]
    return done


COMMAND_DOC = f"Push a training run's local tracking record ({RECORD}) into MLflow, e.g. one written while the " \
    "server was down: one MLflow run per training run (a resumed run's segments are one run). Prints the new run " \
    "ids; torn lines, events before any run and artifacts that no longer exist are skipped and listed on stderr " \
    "(exit status 1 when there were any)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("local_dir", type=Path, help=f"the folder that holds {RECORD} (a run's OUT)")
    parser.add_argument("uri", help="MLflow tracking URI, e.g. http://127.0.0.1:5000")


def run(args: argparse.Namespace) -> int:
    done = replay(args.local_dir, args.uri)
    for run_id in done.runs:
        print(run_id)
    record = args.local_dir / RECORD
    if done.torn_lines:
        print(f"{record}: skipped {len(done.torn_lines)} torn line(s) (not a whole event, e.g. a write "
              f"cut short by a full disk): lines {_numbers(done.torn_lines)}", file=sys.stderr)
    if done.orphan_lines:
        print(f"{record}: skipped events before any run's start: lines {_numbers(done.orphan_lines)}",
              file=sys.stderr)
    for path in done.missing_artifacts:
        print(f"{record}: artifact {path} no longer exists; not uploaded", file=sys.stderr)
    return 1 if done.torn_lines or done.orphan_lines or done.missing_artifacts else 0


def _numbers(lines: list[int], shown: int = 20) -> str:
    return ", ".join(map(str, lines[:shown])) + (f" and {len(lines) - shown} more" if len(lines) > shown else "")
