"""`ultragen` console script: LightningCLI for fit/validate/test/predict, plain subcommands for tools.

`ultragen` or `ultragen --help` lists every subcommand. A configuration that parses but cannot be built exits with
status 2 and one line; ULTRAGEN_DEBUG=1 shows its traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

# Plain (non-Lightning) subcommands: name -> "module:function(argv)"; a returned string is the command's output.
SUBCOMMANDS: dict[str, str] = {
    "export": "ultragen.lit.export:main",
    "data": "ultragen.data.cli:main",
    "cost": "ultragen.cost:main",
    "memory": "ultragen.memory:main",
    "ablate": "ultragen.ablation:main",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
# One line per subcommand for `ultragen --help`.
HELP: dict[str, str] = {
    "fit": "train: ultragen fit -c configs/base.yaml -c configs/model/... -c configs/experiments/...",
    "validate": "one evaluation pass over the validation shards (same configs, --ckpt_path)",
    "test": "HD metrics on the held-out test shards (same configs, --ckpt_path)",
    "predict": "sample mp4 videos from prompts (--ckpt_path, --data.init_args.prompts FILE)",
    "data": "build WebDataset shards from videos, the demo set, or precomputed latents (data build|demo|encode)",
    "cost": "per-layer attention FLOPs of a config on a token grid, and the ratio vs full attention",
    "memory": "per-GPU training memory estimate for DDP, ZeRO-1/2/3 (+offload) and FSDP2 on a token grid",
    "export": "a Lightning or DeepSpeed ZeRO checkpoint -> one safetensors file of DiT weights",
    "ablate": "the paper's Table 4 ablation on procedural data, on a CPU",
}


def usage() -> str:
    """The top-level help: every subcommand with one line."""
    lines = ["usage: ultragen COMMAND [options]   (ultragen COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<10}{HELP[name]}" for name in (*LIGHTNING_COMMANDS, *SUBCOMMANDS)]
    lines += ["", "ULTRAGEN_DEBUG=1 shows the traceback of configuration errors."]
    return "\n".join(lines)


class StderrHandler(logging.StreamHandler):
    """Logs to whatever sys.stderr is now (tests and notebooks swap it), so repeated main() calls share one handler."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _) -> None:
        """StreamHandler.__init__ assigns the stream; ours is always the current sys.stderr."""


def main(argv: list[str] | None = None) -> None:
    """Dispatch to a plain subcommand or to LightningCLI."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    logger = logging.getLogger("ultragen")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        logger.addHandler(StderrHandler())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] in SUBCOMMANDS:
        module, func = SUBCOMMANDS[argv[0]].split(":")
        output = getattr(importlib.import_module(module), func)(argv[1:])
        if output is not None:
            print(output)
        return
    from ultragen.lit.cli import ConfigError, UltraGenCLI

    try:
        UltraGenCLI(args=None if from_command_line else argv)  # args and sys.argv together make Lightning warn
    except ConfigError as exn:
        if os.environ.get("ULTRAGEN_DEBUG"):
            raise
        sys.stderr.write(f"ultragen {argv[0]}: config error: {exn} (ULTRAGEN_DEBUG=1 shows the traceback)\n")
        sys.exit(2)
