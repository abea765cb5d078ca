"""`viral shapes generate`: write the built-in ShapesWorld dataset (training records, ShapesBench, label maps)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("shapes", help="ShapesWorld: the built-in synthetic dataset")
    sub = parser.add_subparsers(dest="shapes_command", metavar="SUBCOMMAND", required=True)
    gen = sub.add_parser("generate", help="draw images and write LLaVA-format records and ShapesBench",
                         description="Deterministic in --seed: images, dense label maps, train.json, "
                                     "captions.json, eval.jsonl (ShapesBench) and meta.json under --out.")
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--train", type=int, default=2000, help="number of training images")
    gen.add_argument("--eval", type=int, default=200, help="number of evaluation images (one question per type each)")
    gen.add_argument("--size", type=int, default=64, help="image side in pixels")
    gen.set_defaults(func=run_generate)


def run_generate(args) -> int:
    from viral.data.shapes import generate

    out = generate(args.out, seed=args.seed, n_train=args.train, n_eval=args.eval, size=args.size)
    print(f"ShapesWorld written to {out}")
    return 0
