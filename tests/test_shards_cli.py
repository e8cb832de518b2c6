"""The mcq-shards command line: --help everywhere, clear exit codes."""

import pytest

from mcq_shards.cli import build_parser, main

COMMANDS = ["cc3m", "webvid", "msrvtt", "msvd", "lsmdc", "didemo", "wds", "csv", "verify", "merge", "synth"]


@pytest.mark.parametrize("command", [[], *[[c] for c in COMMANDS]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: mcq-shards" in capsys.readouterr().out


def test_every_command_is_registered():
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(subparsers.choices) == sorted(COMMANDS)


def test_verify_of_a_non_shard_directory_fails(tmp_path, capsys):
    assert main(["verify", str(tmp_path), "--quiet"]) == 1
    assert "manifest.json not found" in capsys.readouterr().out


def test_cc3m_needs_images_or_wds(tmp_path, capsys):
    assert main(["cc3m", str(tmp_path / "x.tsv"), "-o", str(tmp_path / "o"), "--quiet"]) == 2
    assert "give the TSV and --images, or --wds shards" in capsys.readouterr().err
