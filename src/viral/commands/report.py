"""`viral report RUN_OR_STUDY_DIR`: one self-contained HTML page of a study or run (see `viral.report`)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Writes one self-contained HTML page (default RUN_OR_STUDY_DIR/report.html): the study table with 95%
intervals and per-seed scores (or a run's scores), loss curves, ShapesBench during training, CKNNA per
layer and attention entropy (`viral analyze` outputs found below the folder), and a question browser
(image, question, each arm's answer) filtered by seed, type and outcome ("VIRAL right, baseline wrong").
Sections whose files are absent are left out.
"""


def register(subparsers) -> None:
    from viral.report.html import DEFAULT_MAX_QUESTIONS

    parser = subparsers.add_parser("report", help="one self-contained HTML page of a study or run folder",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", metavar="RUN_OR_STUDY_DIR",
                        help="a `viral study`/`viral demo` or `viral train` folder")
    parser.add_argument("--out", default=None, help="the HTML file to write (default RUN_OR_STUDY_DIR/report.html)")
    parser.add_argument("--max-questions", type=int, default=DEFAULT_MAX_QUESTIONS,
                        help=f"questions per seed in the browser, the benchmark's first ones "
                             f"(default {DEFAULT_MAX_QUESTIONS}; 0: all)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from viral.evaluate.base import DataError
    from viral.report import write_html_report

    try:
        path = write_html_report(args.folder, args.out, max_questions=args.max_questions)
    except (FileNotFoundError, DataError) as error:
        raise SystemExit(f"viral report: {error}") from error
    print(f"report: {path}")
    return 0
