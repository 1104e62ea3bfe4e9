"""setup.cfg and environment.yml list the same dependencies; the console script resolves."""

import configparser
import re
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]


def _setup_cfg_requirements() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    req = cfg["options"]["install_requires"].strip().splitlines()
    return {r.strip() for r in req if r.strip()}


def test_environment_yml_mirrors_setup_cfg():
    env = OmegaConf.to_container(OmegaConf.load(ROOT / "environment.yml"))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pip = {p for p in pip if not p.startswith("-e")}
    assert pip == _setup_cfg_requirements()


def test_requirements_are_well_formed_and_cover_the_design_card():
    names = {re.split(r"[<>=!\[ ]", r)[0].lower() for r in _setup_cfg_requirements()}
    card = {"lightning", "torch", "torchvision", "einops", "timm", "peft", "omegaconf", "deepspeed", "webdataset", "tensorboard"}
    assert card <= names


def test_console_script_is_declared():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "ultragen = ultragen.cli:main" in cfg["options.entry_points"]["console_scripts"]
