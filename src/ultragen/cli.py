"""`ultragen` console script: LightningCLI for fit/validate/test/predict, plain subcommands for tools."""

from __future__ import annotations

import importlib
import logging
import os
import sys

# Plain (non-Lightning) subcommands: name -> "module:function(argv)"; a returned string is the command's output.
SUBCOMMANDS: dict[str, str] = {
    "export": "ultragen.lit.export:main",
    "data": "ultragen.data.cli:main",
    "cost": "ultragen.models.attention.cost:main",
    "ablate": "ultragen.ablation:main",
}


def main(argv: list[str] | None = None) -> None:
    """Dispatch to a plain subcommand or to LightningCLI."""
    argv = list(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("ultragen")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if argv and argv[0] in SUBCOMMANDS:
        module, func = SUBCOMMANDS[argv[0]].split(":")
        output = getattr(importlib.import_module(module), func)(argv[1:])
        if output is not None:
            print(output)
        return
    from ultragen.lit.cli import UltraGenCLI

    UltraGenCLI(args=argv)
