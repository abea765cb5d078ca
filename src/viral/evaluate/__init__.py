"""Benchmarks behind `viral eval`: one interface, one module per benchmark, strict parsers.

    from viral.evaluate import evaluate
    summary = evaluate(predictor, "mmvp", "data/MMVP", output="runs/x/mmvp.json")

Benchmarks (see each module for the local layout it reads and the protocol it follows):
cvbench, whatsup, mmvp, pope, mme, mmstar, shapes. Results of two runs are compared with
`compare_results` / `viral eval compare A.json B.json`.

Accuracy-like metrics are percentages (0-100) as in the paper's Table 1; MME reports its usual
scores (acc + acc+ per subtask, summed). A checkpoint written by `viral train` is a plain llava-hf
model, so lmms-eval can score it too, e.g.

    python -m lmms_eval --model llava_hf --model_args pretrained=runs/x/checkpoint \
        --tasks pope,mme,mmstar --batch_size 1 --output_path logs/

(lmms-eval's prompts and parsers differ from the VIRAL protocol followed here, so expect small
differences between the two.)
"""

from viral.evaluate.base import (
    Benchmark,
    DataError,
    ImageRef,
    MissingImageError,
    Prediction,
    Record,
    ScoreReport,
)
from viral.evaluate.compare import compare_results, format_comparison, load_results
from viral.evaluate.parsing import parse_choice, parse_direction, parse_short_answer, parse_yes_no
from viral.evaluate.registry import BENCHMARKS, get_benchmark
from viral.evaluate.runner import evaluate, predictions_path

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "DataError",
    "ImageRef",
    "MissingImageError",
    "Prediction",
    "Record",
    "ScoreReport",
    "compare_results",
    "evaluate",
    "format_comparison",
    "get_benchmark",
    "load_results",
    "parse_choice",
    "parse_direction",
    "parse_short_answer",
    "parse_yes_no",
    "predictions_path",
]
