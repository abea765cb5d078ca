"""`viral cache-teacher CONFIG.yaml --out DIR [--set key=value ...]`: run the teacher once over the training
images and store its features, so that training with `align.teacher_cache: DIR` never runs it."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "cache-teacher", help="precompute the teacher's features over the training images (resumable)",
        description="Run align.vra_target once over the images of data.path and store float16 features, already "
                    "on the student's image-token grid, in DIR (safetensors shards keyed by image path, plus a "
                    "manifest). Re-running fills only what is missing. Then train with "
                    "--set align.teacher_cache=DIR.",
    )
    parser.add_argument("config", nargs="?", help="experiment YAML/JSON file (defaults when omitted)")
    parser.add_argument("--out", required=True, metavar="DIR", help="cache folder (created or resumed)")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="dotted overrides, values parsed as YAML (align.vra_target=sam-vit-b)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per teacher forward (default 16)")
    parser.add_argument("--shard-size", type=int, default=256, help="images per safetensors shard (default 256)")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from viral.align.cache import build_teacher_cache
    from viral.config import load_config

    config = load_config(args.config, args.overrides)
    summary = build_teacher_cache(config, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
                                  device=args.device, progress=not args.no_progress)
    print(f"teacher cache {summary['out']}: {summary['images']} images, {summary['already_cached']} already cached, "
          f"{summary['computed']} computed ({summary['images_per_second']:.1f} images/s), "
          f"{summary['skipped_bad']} unreadable skipped, {summary['shards_written']} shard(s) written")
    print(f"train with: --set align.teacher_cache={summary['out']}")
    return 0
