"""`viral train CONFIG.yaml [--set key=value ...]`: train with L = L_LM + lambda * L_VRA."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train an MLLM (LLaVA recipe) with or without VIRAL alignment",
        description="Train as the config says and export a plain llava-hf checkpoint to output_dir. "
                    "Override any field with --set section.key=value (bare keys work when unique, "
                    "e.g. --set max_steps=100 output_dir=runs/x data.path=data/train.json).",
    )
    parser.add_argument("config", nargs="?", help="experiment YAML/JSON file (defaults when omitted)")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="dotted overrides, values parsed as YAML (align.target_layers=[8,16])")
    parser.set_defaults(func=run)


def run(args) -> int:
    from viral.config import load_config

    config = load_config(args.config, args.overrides)  # before the heavy imports: a bad key fails fast
    from viral.resilience import TrainingInterrupted
    from viral.train import train

    try:
        out = train(config)
    except TrainingInterrupted as stop:
        print(stop)
        return 143  # 128 + SIGTERM, what schedulers expect from a terminated job
    print(f"checkpoint: {out}")
    return 0
