"""`viral study`: the ShapesWorld baseline-versus-VIRAL study over several seeds (see `viral.study`)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Runs the whole ShapesWorld study: the world (OUT/shapes, reused), stage 0 (OUT/encoders: the student
vision tower with a global objective, the teacher VFM with a dense one, reused; their patch probes run
beside the next stages), the LLM on the world's text alone (once for every seed; each image replaced by
its scene as words, or removed with --language-corpus text), then per seed stage 1 (projector
pre-training on captions) and stage 2 twice from the same weights and data order -
baseline and VIRAL (teacher = the stage-0 teacher) - and ShapesBench on both. Writes OUT/study.json,
OUT/study.md and OUT/study.png: per question type (relation and position also per axis of the
image) each arm's mean ± std over seeds and the paired tests of the difference. Finished runs are
reused and interrupted ones resume; --reuse-from copies in an earlier study's finished runs whose
configs match (e.g. its language stage and stage 1 for another stage-2 length).
"""


def add_study_arguments(parser: argparse.ArgumentParser, demo: bool = False) -> None:
    from viral.data.shapes import RELATION_PAIRS
    from viral.study.pipeline import DEFAULT_CONFIG
    from viral.study.scales import SCALES

    parser.add_argument("--out", default="runs/demo" if demo else "runs/study", help="output folder")
    parser.add_argument("--scale", choices=sorted(SCALES), default="demo" if demo else "full",
                        help="the study's size (viral.study.scales): 'full', the study of record (about 85 "
                             "core-minutes for one seed; 62 at --finetune-steps 900, 42 at 300), or 'demo', about a "
                             "sixth of it, what make demo runs "
                             f"(default {'demo' if demo else 'full'}); the flags below override it")
    parser.add_argument("--data", default=None, help="ShapesWorld folder to use or create (default OUT/shapes)")
    parser.add_argument("--encoders", default=None, help="stage-0 folder to use or create (default OUT/encoders)")
    parser.add_argument("--reuse-from", default=None, metavar="DIR",
                        help="an earlier study's folder: each of its finished runs whose config is this study's "
                             "(same data, encoders, model and training; only the folder differs) is copied in "
                             "instead of trained, e.g. the language stage and stage 1 when only "
                             "--finetune-steps differs; pass that study's --data and --encoders too")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"stage-2 config (default {DEFAULT_CONFIG})")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides of the config for every stage, e.g. model.hidden_size=256")
    parser.add_argument("--language-steps", type=int, default=None,
                        help="steps of the LLM on the world's text before stage 1 (0: none, the LLM starts random)")
    parser.add_argument("--language-corpus", choices=["scene", "text"], default=None,
                        help="what the language stage reads where an image was: 'scene' (default), the image's "
                             "scene as words laid out as its image tokens are; 'text', nothing (the image removed)")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="stage-1 steps")
    parser.add_argument("--finetune-steps", type=int, default=None, help="stage-2 steps (default: the config's)")
    parser.add_argument("--train-images", type=int, default=None, help="ShapesWorld training images")
    parser.add_argument("--eval-images", type=int, default=None, help="ShapesBench images (one question per type)")
    parser.add_argument("--question-types", nargs="+", default=None, metavar="TYPE",
                        help="question types of a new world (default: all five, count relation existence "
                             "colour position)")
    parser.add_argument("--type-weights", default=None, metavar="TYPE=W,...",
                        help="how often each type is drawn for a new world's training turn, e.g. relation=2,"
                             "count=1,existence=1,colour=1,position=1 (default: uniform)")
    parser.add_argument("--relation-pairs", choices=RELATION_PAIRS, default=None,
                        help="which objects a new world's relation questions compare: 'apart' (default), any two "
                             "that do not overlap along the asked axis; 'across', two on either side of the "
                             "image's midline")
    parser.add_argument("--eval-limit", type=int, default=None, help="score only the first N questions")
    parser.add_argument("--encoder-steps", type=int, default=None, help="stage-0 steps of each encoder")
    parser.add_argument("--probe-steps", type=int, default=None, help="stage-0 steps of each probe")
    parser.add_argument("--jobs", type=int, default=None,
                        help="processes side by side (the two arms; the two encoders), one thread each "
                             "(default: 2, or 1 on a one-core machine)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the main process (default 1: the tiny models' ops are too small "
                             "to share, a second thread mostly spins)")


def register(subparsers) -> None:
    parser = subparsers.add_parser("study", help="baseline vs VIRAL on ShapesWorld over several seeds, with statistics",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1), default 5")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
    add_study_arguments(parser)
    parser.set_defaults(func=run)


def settings_from_args(args, seeds: list[int], defaults: dict | None = None):
    """StudySettings and EncoderSettings of `args.scale`, with the flags given on top (None: keep the scale's)."""
    from viral.study.scales import scaled_settings

    settings, encoders = scaled_settings(args.scale, seeds=seeds, config=args.config,
                                         overrides=list(args.overrides), **(defaults or {}))
    for flag, name in (("language_steps", "language_steps"), ("language_corpus", "language_corpus"),
                       ("pretrain_steps", "pretrain_steps"), ("finetune_steps", "finetune_steps"),
                       ("train_images", "n_train"), ("eval_images", "n_eval"), ("eval_limit", "eval_limit"),
                       ("jobs", "jobs"), ("question_types", "question_types"),
                       ("relation_pairs", "relation_pairs")):
        if getattr(args, flag) is not None:
            setattr(settings, name, getattr(args, flag))
    if args.type_weights is not None:
        from viral.commands.shapes import parse_weights
        from viral.errors import UserError

        try:
            settings.type_weights = parse_weights(args.type_weights)
        except ValueError as error:
            raise UserError(f"study: {error}") from error
    if args.encoder_steps is not None:
        encoders.student_steps = encoders.teacher_steps = args.encoder_steps
    if args.probe_steps is not None:
        encoders.probe_steps = args.probe_steps
    return settings, encoders


def default_jobs() -> int:
    """Two processes side by side (the study's natural pair: two arms, two encoders), fewer on one core."""
    import os

    return max(1, min(2, os.cpu_count() or 1))


def setup(args) -> None:
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)


def run(args) -> int:
    import shlex
    import sys

    from viral.report import write_html_report
    from viral.study.pipeline import run_study
    from viral.study.report import MAIN_HEADER, axis_rows, comparison_rows, format_table

    setup(args)
    settings, encoders = settings_from_args(args, list(range(args.first_seed, args.first_seed + args.seeds)),
                                            {"jobs": default_jobs()})
    command = "viral " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    summary = run_study(args.out, settings, encoders, data_dir=args.data, encoders_dir=args.encoders, command=command,
                        reuse_from=args.reuse_from)
    print()
    print(format_table(MAIN_HEADER, comparison_rows(summary)))
    by_axis = axis_rows(summary)
    if by_axis:
        print("\nrelation and position per axis of the image\n")
        print(format_table(MAIN_HEADER, by_axis))
    print(f"\nwall time {summary['seconds']['total'] / 60:.1f} min")
    for name, path in summary["outputs"].items():
        print(f"{name}: {path}")
    print(f"report: {write_html_report(args.out)}")
    return 0
