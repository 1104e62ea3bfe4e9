"""UltraGenCLI: LightningCLI over VideoDiffusionModule and any LightningDataModule (subclass mode)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI

from ultragen.lit.module import VideoDiffusionModule


class UltraGenCLI(LightningCLI):
    """`ultragen fit|validate|test|predict -c configs/...yaml`; the config is saved next to each run."""

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
