"""The console script for a newcomer: `ultragen --help` lists every subcommand without warnings; a configuration
that cannot be built is one line naming the keys (exit 2), its traceback behind ULTRAGEN_DEBUG=1."""

import subprocess
import sys
from pathlib import Path

import pytest

from ultragen.cli import LIGHTNING_COMMANDS, SUBCOMMANDS, main
from ultragen.lit.cli import ConfigError

ROOT = Path(__file__).resolve().parents[1]
STACKED = ["fit", "-c", "configs/debug/tiny.yaml", "-c", "configs/experiments/ablation_no_global.yaml",
           "--trainer.fast_dev_run=1", "--trainer.logger=false"]


@pytest.mark.parametrize("argv", [["--help"], ["-h"], []])
def test_help_lists_every_subcommand_once(capsys, argv):
    main(argv)
    lines = capsys.readouterr().out.splitlines()
    for name in (*LIGHTNING_COMMANDS, *SUBCOMMANDS):
        (line,) = [line for line in lines if line.split()[:1] == [name]]
        assert len(line.split()) > 3  # a one-line description follows the name


def test_help_from_the_console_prints_no_warning():
    for argv in (["--help"], ["fit", "--help"]):
        done = subprocess.run([sys.executable, "-m", "ultragen", *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0 and "fit" in done.stdout
        assert "Warning" not in done.stderr and "args parameter" not in done.stderr, done.stderr


def test_config_error_is_one_line_naming_the_keys(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["ultragen"])
    monkeypatch.delenv("ULTRAGEN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(STACKED)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "config error" in line]
    assert line.startswith("ultragen fit: config error: full_attention_layers [2, -3] out of range")
    assert "model.net.init_args.full_attention_layers=[0, 1, 2, -3, -2, -1]" in line
    assert "model.net.init_args.num_layers=2" in line and "ULTRAGEN_DEBUG=1" in line
    monkeypatch.setenv("ULTRAGEN_DEBUG", "1")
    with pytest.raises(ConfigError, match="out of range for num_layers=2") as raised:
        main(STACKED)
    assert isinstance(raised.value.__cause__, ValueError)


def test_a_tiny_fit_does_not_warn_about_the_frozen_eval_mode_encoders(tmp_path):
    """Lightning warns about every module in eval mode at the start of training; the frozen codec and text encoder
    are in eval mode on purpose, so that one message is filtered (ultragen.lit.module) and nothing else."""
    done = subprocess.run(
        [sys.executable, "-m", "ultragen", "fit", "-c", "configs/debug/tiny.yaml", "--trainer.fast_dev_run=1",
         f"--trainer.logger.init_args.save_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "`max_steps=1` reached" in done.stderr  # the run really trained
    assert "in eval mode at the start of training" not in done.stderr + done.stdout
