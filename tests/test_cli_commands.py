"""The commands users and other tools type: shims, `python -m`, and the installed console scripts."""

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = {"dual-encoder-train": "dual_encoder.cli.train:main", "dual-encoder-evaluate": "dual_encoder.cli.evaluate:main",
           "dual-encoder-data": "dual_encoder.cli.data:main"}


def test_console_scripts_are_declared_for_the_three_tools():
    declared = {e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("dual-encoder-")}
    assert declared == SCRIPTS


@pytest.mark.parametrize("command, expected", [
    ([sys.executable, "train.py", "--help"], "--captions-per-image"),
    ([str(BIN / "dual-encoder-train"), "--help"], "--captions-per-image"),
    ([sys.executable, "evaluate.py", "--help"], "--templates"),
    ([str(BIN / "dual-encoder-evaluate"), "search", "--help"], "--top-k"),
    ([sys.executable, "-m", "dual_encoder.data", "--help"], "--images-per-shard"),
    ([str(BIN / "dual-encoder-data"), "--help"], "--images-per-shard"),
])
def test_each_command_answers_help(command, expected):
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expected in out.stdout and out.stdout.startswith("usage: ")
