"""The `mcq-ds` command line as a user meets it: one entry point, fast top-level help, honest defaults, and
enumerated options that refuse other values (from the command line and from a config file)."""
import json
import subprocess
import sys

import pytest

from mcq_ds.cli import BENCHMARKS, COMMANDS, main
from mcq_ds.engine.config import resolve


def test_top_level_help_lists_every_command_without_importing_the_stack():
    code = ("import sys, contextlib, io\nfrom mcq_ds.cli import main\nout = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n    try:\n        main(['--help'])\n    except SystemExit:\n"
            "        pass\nprint(out.getvalue())\nprint(sorted(m for m in ('torch', 'deepspeed', 'transformers', "
            "'mlflow', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for name in [*COMMANDS, "bench"]:
        assert f"    {name}" in result.stdout, name
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("command", [*COMMANDS, "bench"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and f"usage: mcq-ds {command}" in capsys.readouterr().out


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_is_reachable(name, capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", name, "--help"])
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out


def test_train_help_shows_the_real_defaults_and_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--workers WORKERS data-loading workers per rank (default: 4)", "{step,cosine}",
                  "{torch,dali}", "{span,parity}", "{noun,verb}", "(default: latest)", "-o OUT, --out OUT",
                  "--hflip, --no-hflip", "(default: on)", "(default: runs/train)"):
        assert shown in text, shown


@pytest.mark.parametrize("flag, value", [("--schedule", "steps"), ("--question-mode", "Span"), ("--loader", "DALI"),
                                         ("--stage", "4f-nouns"), ("--preset", "huge")])
def test_an_enumerated_option_refuses_other_values(flag, value, capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", flag, value, "--data", "webvid=x"])
    assert done.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_a_config_file_with_a_wrong_value_is_refused(tmp_path):
    import argparse

    from mcq_ds.engine.config import add_arguments

    (tmp_path / "c.json").write_text(json.dumps({"schedule": "steps", "data": {"webvid": "x"}}))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match="schedule must be one of step, cosine; got 'steps'"):
        resolve(parser.parse_args(["--config", str(tmp_path / "c.json"), "--stage", "demo-4f-noun"]))
