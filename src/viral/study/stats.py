"""Statistics of the study: per question type, each arm's mean and std over seeds and a paired test.

Seeds pair the arms: seed k's baseline and VIRAL runs start from the same weights and see the same
data in the same order, so the unit of comparison is the per-seed difference d_k = VIRAL_k - baseline_k.
Reported per type: mean and sample std (ddof 1) of each arm, mean and std of d, a 95% t interval of
the mean difference, the paired t-test p-value (scipy `ttest_rel`, two-sided; needs >= 2 seeds and
non-constant differences) and the exact sign test p-value (two-sided binomial on the signs, ties dropped).
Within one seed, `mcnemar` compares the two arms question by question (exact test on the discordant pairs).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as scipy_stats


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits)


def describe(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (None with one value)."""
    array = np.asarray(values, dtype=float)
    return {"mean": _round(array.mean()), "std": _round(array.std(ddof=1)) if len(array) > 1 else None,
            "values": [float(v) for v in array]}


def sign_test(differences: list[float]) -> dict[str, Any]:
    """Exact two-sided sign test of the differences (zeros dropped); p = 1 when all are zero."""
    positive = int(sum(d > 0 for d in differences))
    negative = int(sum(d < 0 for d in differences))
    n = positive + negative
    p = float(scipy_stats.binomtest(positive, n, 0.5).pvalue) if n else 1.0
    return {"positive": positive, "negative": negative, "ties": len(differences) - n, "p_value": _round(p)}


def paired_comparison(baseline: list[float], treated: list[float]) -> dict[str, Any]:
    """Paired statistics of `treated - baseline` over seeds (same order in both lists)."""
    if len(baseline) != len(treated):
        raise ValueError(f"paired scores need the same seeds: {len(baseline)} baseline vs {len(treated)} treated")
    differences = [t - b for b, t in zip(baseline, treated)]
    array = np.asarray(differences, dtype=float)
    n = len(array)
    result: dict[str, Any] = {"n_seeds": n, "mean_difference": _round(array.mean()),
                              "std_difference": _round(array.std(ddof=1)) if n > 1 else None,
                              "differences": differences}
    t_p, t_stat, interval = None, None, None
    if n > 1 and array.std(ddof=1) > 0:
        test = scipy_stats.ttest_rel(treated, baseline)
        t_stat, t_p = float(test.statistic), float(test.pvalue)
        half = scipy_stats.t.ppf(0.975, n - 1) * array.std(ddof=1) / math.sqrt(n)
        interval = [_round(array.mean() - half), _round(array.mean() + half)]
    elif n > 1:  # every seed moved by exactly the same amount
        t_p = 1.0 if array[0] == 0 else 0.0
    result["paired_t"] = {"statistic": _round(t_stat), "p_value": _round(t_p), "ci95": interval}
    result["sign_test"] = sign_test(differences)
    return result


def mcnemar(baseline_correct: dict[str, bool], treated_correct: dict[str, bool]) -> dict[str, Any]:
    """Exact McNemar test of two runs on the same questions (keys are question ids)."""
    common = sorted(set(baseline_correct) & set(treated_correct))
    only_treated = sum(treated_correct[q] and not baseline_correct[q] for q in common)
    only_baseline = sum(baseline_correct[q] and not treated_correct[q] for q in common)
    n = only_treated + only_baseline
    p = float(scipy_stats.binomtest(only_treated, n, 0.5).pvalue) if n else 1.0
    return {"questions": len(common), "only_treated_correct": only_treated,
            "only_baseline_correct": only_baseline, "p_value": _round(p)}


def summarise(scores: dict[str, dict[int, dict[str, float]]], types: list[str],
              baseline: str = "baseline", treated: str = "viral") -> dict[str, Any]:
    """`scores[arm][seed][type]` -> per type: each arm's mean/std and the paired comparison."""
    seeds = sorted(set(scores[baseline]) & set(scores[treated]))
    table = {}
    for name in types:
        b = [scores[baseline][s][name] for s in seeds if name in scores[baseline][s]]
        t = [scores[treated][s][name] for s in seeds if name in scores[treated][s]]
        if not b or len(b) != len(t):
            continue
        table[name] = {baseline: describe(b), treated: describe(t), "paired": paired_comparison(b, t)}
    return {"seeds": seeds, "types": table}
