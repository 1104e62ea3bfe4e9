"""UltraGenCLI: LightningCLI over VideoDiffusionModule and any LightningDataModule (subclass mode)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningCLI

from ultragen.lit.evaluation import TestMetrics
from ultragen.lit.module import VideoDiffusionModule


log = logging.getLogger(__name__)


def resumable_version(save_dir: str | Path, name: str) -> str | None:
    """The newest `version_N` under save_dir/name whose checkpoints/ holds a last checkpoint, or None."""
    numbers = [int(d.name[8:]) for d in Path(save_dir, name).glob("version_*")
               if d.name[8:].isdigit() and any((d / "checkpoints").glob("last*.ckpt"))]
    return f"version_{max(numbers)}" if numbers else None


class ConfigError(ValueError):
    """A configuration that parses but cannot be built (out-of-range layers, mismatched widths, impossible grids)."""


def config_keys(config, message: str, limit: int = 4) -> list[str]:
    """`key=value` of the config entries whose last name appears as a word in the message (the keys to fix)."""
    found = []
    for key, value in config.items():
        name = key.rsplit(".", 1)[-1]
        if name != "init_args" and re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message):
            found.append(f"{key}={value}")
    return found[:limit]


class UltraGenCLI(LightningCLI):
    """`ultragen fit|validate|test|predict -c configs/...yaml`; the config is saved next to each run.

    A ValueError or TypeError raised while the model, data or trainer are built becomes a ConfigError with one line
    naming the config keys the message mentions and their values.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs):
        super().__init__(
            VideoDiffusionModule,
            L.LightningDataModule,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        """`evaluation.*` configures the generate-and-score step of `test`; `--metrics [a, b]` picks its metrics."""
        parser.add_lightning_class_args(TestMetrics, "evaluation")
        parser.add_argument("--metrics", type=list[str] | None, default=None, help="metrics of `test` (default: all)")
        parser.link_arguments("metrics", "evaluation.metrics")

    def before_instantiate_classes(self) -> None:
        """`fit --ckpt_path last` continues the newest run version that has a last checkpoint: a logger without a
        fixed version would start a new, empty version directory, and Lightning looks for `last.ckpt` there."""
        if self.subcommand != "fit" or self.config.fit.ckpt_path != "last":
            return
        logger = self.config.fit.trainer.logger
        args = logger.init_args if isinstance(logger, Namespace) and "init_args" in logger else None
        if args is None or args.get("version") is not None or args.get("save_dir") is None:
            return
        name = args.get("name") or "lightning_logs"
        version = resumable_version(args.save_dir, name)
        if version is not None:
            args.version = version
            log.info("--ckpt_path last: resuming %s", Path(args.save_dir, name, version))

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as exn:
            message = " ".join(str(exn).split())
            config = self.config[self.subcommand] if self.subcommand else self.config
            keys = config_keys(config, message)
            where = f" ({', '.join(keys)})" if keys else ""
            raise ConfigError(
                f"{message}{where}; fix the config file (-c) or override the key on the command line"
            ) from exn
