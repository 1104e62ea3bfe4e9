"""UltraGenCLI: LightningCLI over VideoDiffusionModule and any LightningDataModule (subclass mode)."""

from __future__ import annotations

import re

import lightning as L
from lightning.pytorch.cli import LightningCLI

from ultragen.lit.evaluation import TestMetrics
from ultragen.lit.module import VideoDiffusionModule


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
