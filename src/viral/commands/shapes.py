"""`viral shapes generate`: write the built-in ShapesWorld dataset (training records, ShapesBench, label maps).
`viral shapes encoders`: stage 0 of the study - train the student vision tower and the teacher VFM on it.
`viral shapes oracle`: the study's tiny LLM trained and scored with each image replaced by its scene as text."""

from __future__ import annotations


def register(subparsers) -> None:
    from viral.data.shapes import RELATION_PAIRS

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
    gen.add_argument("--turns", type=int, default=3, help="question-answer turns per training image")
    gen.add_argument("--max-objects", type=int, default=None,
                     help="each image holds 1..N objects (default: ShapesWorld's MAX_OBJECTS)")
    gen.add_argument("--types", default=None,
                     help="comma-separated question types the world asks, in training and in ShapesBench "
                          "(default: count,relation,existence,colour; position is opt-in)")
    gen.add_argument("--type-weights", default=None, metavar="TYPE=W,...",
                     help="how often each type is drawn for a training turn, e.g. relation=2,count=1 (types "
                          "left out get 0; default: uniform); ShapesBench asks every type that applies")
    gen.add_argument("--relation-pairs", default="apart", choices=RELATION_PAIRS,
                     help="which objects a relation question compares: apart, any two that do not overlap along "
                          "the asked axis (default); across, two on either side of the image's midline, so the "
                          "relation is either object's half of the image")
    gen.add_argument("--no-fallback", action="store_true",
                     help="drop a training turn whose drawn type does not apply to its image (and images left "
                          "with none) instead of asking existence there, e.g. a world of relation questions alone")
    gen.add_argument("--jobs", type=int, default=1, help="processes drawing the scenes (same files for any N)")
    gen.set_defaults(func=run_generate)

    enc = sub.add_parser(
        "encoders", help="stage 0: train the student vision tower (global) and the teacher VFM (dense)",
        description="Trains a CLIP-architecture student on presence of (shape, colour) pairs only and a "
                    "DINOv2-architecture teacher on per-patch shape and colour from the label maps; saves both "
                    "in transformers format (OUT/student, OUT/teacher) and writes OUT/report.json with their "
                    "patch-level probes and the alignment diagnostics. Reused when OUT already holds them.",
    )
    enc.add_argument("--data", required=True, help="ShapesWorld folder (from `viral shapes generate`)")
    enc.add_argument("--out", required=True, help="output folder")
    enc.add_argument("--steps", type=int, default=None, help="training steps of each encoder")
    enc.add_argument("--probe-steps", type=int, default=None, help="training steps of each probe")
    enc.add_argument("--probe-tasks", default=None,
                     help="comma-separated probe tasks: count, position (the premise; the default), existence, "
                          "colour")
    enc.add_argument("--force", action="store_true", help="retrain even when OUT holds encoders")
    enc.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    enc.set_defaults(func=run_encoders)

    oracle = sub.add_parser(
        "oracle", help="can the tiny LLM learn each question type when the scene is given as text?",
        description="Replaces every image by its exact scene as text (one word per grid cell in raster order: "
                    "'bluetriangle' or 'blank'), trains the study's tiny LLM on the world's training questions "
                    "with it (the study's language-stage config) and scores ShapesBench the same way. A type "
                    "at chance here is one the LLM does not learn in that budget even from perfect input. "
                    "Writes OUT/oracle.json, OUT/predictions.jsonl and the run under OUT/language.",
    )
    oracle.add_argument("--data", required=True, help="ShapesWorld folder (from `viral study` or `viral shapes generate`)")
    oracle.add_argument("--encoders", required=True,
                        help="stage-0 encoders folder: the student's patch grid sets the scene's (the tiny LLaVA holds a "
                             "random tower of its shape, which the text never uses)")
    oracle.add_argument("--out", required=True, help="output folder")
    oracle.add_argument("--steps", type=int, default=1000, help="training steps (batch 32, as the study)")
    oracle.add_argument("--types", default=None,
                        help="comma-separated question types to train and score (default: all five)")
    oracle.add_argument("--single-turn", action="store_true",
                        help="one record per question instead of the study's multi-turn conversations")
    oracle.add_argument("--row-end", default=None, metavar="WORD",
                        help="a word closing each row of the scene, as LLaVA-NeXT's image-newline token "
                             "(default: none; rows run on, as the study's image tokens do)")
    oracle.add_argument("--cell-names", action="store_true",
                        help="put a word naming its row and column ('r2c5') before each cell's word, the text "
                             "analogue of a 2-D position embedding on each image token")
    oracle.add_argument("--seed", type=int, default=0, help="the tiny LLM's initialisation and data order")
    oracle.add_argument("--eval-limit", type=int, default=None, help="ShapesBench questions scored (default: all)")
    oracle.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    oracle.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides of the language stage's config, as `viral study --set` "
                             "(e.g. model.num_layers=8: a deeper tiny LLM)")
    oracle.set_defaults(func=run_oracle)


def run_generate(args) -> int:
    from viral.data.shapes import MAX_OBJECTS, generate
    from viral.errors import UserError

    types = [t.strip() for t in args.types.split(",") if t.strip()] if args.types else None
    max_objects = MAX_OBJECTS if args.max_objects is None else args.max_objects
    try:
        weights = None if args.type_weights is None else parse_weights(args.type_weights)
        out = generate(args.out, seed=args.seed, n_train=args.train, n_eval=args.eval, size=args.size,
                       turns=args.turns, max_objects=max_objects, types=types, jobs=args.jobs,
                       type_weights=weights, relation_pairs=args.relation_pairs, fallback=not args.no_fallback)
    except ValueError as error:
        raise UserError(f"shapes generate: {error}") from error
    print(f"ShapesWorld written to {out}")
    return 0


def parse_weights(text: str) -> dict[str, float]:
    """`--type-weights` "relation=2,count=1" as {"relation": 2.0, "count": 1.0}; ValueError names a bad entry."""
    weights = {}
    for entry in (part.strip() for part in text.split(",") if part.strip()):
        name, _, value = entry.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--type-weights entry {entry!r}: give TYPE=NUMBER") from None
    return weights


def parse_names(text: str, option: str, choices) -> list[str]:
    """`count,existence` -> ["count", "existence"]; a name outside `choices` is the user's error, naming `option`
    and the choices."""
    from viral.errors import UserError

    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in choices]
    if unknown or not names:
        raise UserError(f"{option} {text!r}: unknown {', '.join(unknown) or 'empty list'}; "
                        f"choose from {', '.join(choices)}")
    return names


def run_encoders(args) -> int:
    import json
    import logging

    import torch

    from viral.study.encoders import EncoderSettings, train_encoders

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = EncoderSettings()
    if args.steps is not None:
        settings.student_steps = settings.teacher_steps = args.steps
    if args.probe_steps is not None:
        settings.probe_steps = args.probe_steps
    if args.probe_tasks is not None:
        from viral.study.probes import TASKS

        settings.probe_tasks = parse_names(args.probe_tasks, "--probe-tasks", TASKS)
    report = train_encoders(args.data, args.out, settings, force=args.force)
    summary = {key: report[key] for key in ("probes", "diagnostics", "seconds") if key in report}
    summary["student_eval"], summary["teacher_eval"] = report["student"]["eval"], report["teacher"]["eval"]
    print(json.dumps(summary, indent=2))
    print(f"encoders written to {args.out} (student/, teacher/, report.json)")
    return 0


def run_oracle(args) -> int:
    import json
    import logging
    from pathlib import Path

    from viral.errors import UserError
    from viral.study.oracle import OracleSettings, scene_oracle

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = OracleSettings(steps=args.steps, single_turn=args.single_turn, seed=args.seed,
                              eval_limit=args.eval_limit, row_end=args.row_end,
                              cell_names=args.cell_names, overrides=list(args.overrides))
    if args.types is not None:
        from viral.study.pipeline import QUESTION_TYPES

        settings.types = parse_names(args.types, "--types", QUESTION_TYPES)
    for folder, what in ((Path(args.data) / "train.json", "--data"), (Path(args.encoders) / "student", "--encoders")):
        if not folder.exists():
            raise UserError(f"{what}: {folder} does not exist")
    result = scene_oracle(args.data, args.encoders, args.out, settings, threads=args.threads)
    print(json.dumps({"scores": result["scores"], "final_loss": result["final_loss"]}, indent=2))
    print(f"oracle written to {args.out} (oracle.json, predictions.jsonl, language/)")
    return 0
