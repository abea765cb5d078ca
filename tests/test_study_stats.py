"""The study's statistics on fixed fake scores: known means, standard deviations and p-values."""

import math

import pytest

from viral.study.stats import describe, mcnemar, paired_comparison, sign_test, summarise

BASELINE = [50.0, 60.0, 70.0]
VIRAL = [52.0, 63.0, 71.0]  # differences 2, 3, 1: mean 2, std 1


def test_describe_gives_mean_and_sample_std():
    stats = describe(BASELINE)
    assert stats["mean"] == 60.0 and stats["std"] == 10.0
    assert describe([42.0])["std"] is None


def test_paired_t_test_matches_the_closed_form_for_two_degrees_of_freedom():
    result = paired_comparison(BASELINE, VIRAL)
    assert result["mean_difference"] == 2.0 and result["std_difference"] == 1.0
    t = 2.0 / (1.0 / math.sqrt(3))
    assert result["paired_t"]["statistic"] == pytest.approx(t, abs=1e-4)
    # Student t with 2 degrees of freedom: two-sided p = 1 - t / sqrt(2 + t^2)
    assert result["paired_t"]["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-4)
    half = 4.302653 / math.sqrt(3)  # t_{0.975, 2} * std / sqrt(n)
    assert result["paired_t"]["ci95"] == pytest.approx([2 - half, 2 + half], abs=1e-3)


def test_sign_test_is_exact_and_drops_ties():
    assert sign_test([2.0, 3.0, 1.0]) == {"positive": 3, "negative": 0, "ties": 0, "p_value": 0.25}
    result = sign_test([1.0, -1.0, 0.0, 2.0, 3.0, 4.0, 5.0])
    assert (result["positive"], result["negative"], result["ties"]) == (5, 1, 1)
    assert result["p_value"] == pytest.approx(2 * 7 / 64, abs=1e-4)  # P(X <= 1 | n=6) doubled
    assert sign_test([0.0, 0.0])["p_value"] == 1.0


def test_constant_differences_and_single_seed_do_not_crash():
    assert paired_comparison([50.0, 60.0], [55.0, 65.0])["paired_t"]["p_value"] == 0.0
    single = paired_comparison([50.0], [55.0])
    assert single["paired_t"]["p_value"] is None and single["std_difference"] is None
    with pytest.raises(ValueError, match="same seeds"):
        paired_comparison([1.0, 2.0], [1.0])


def test_mcnemar_counts_discordant_questions():
    baseline = {f"q{i}": i < 4 for i in range(10)}  # q0..q3 right
    treated = {f"q{i}": 1 <= i < 10 for i in range(10)}  # q1..q9 right: 6 only-treated, 1 only-baseline
    result = mcnemar(baseline, treated)
    assert (result["only_treated_correct"], result["only_baseline_correct"]) == (6, 1)
    assert result["p_value"] == pytest.approx(2 * (1 + 7) / 128, abs=1e-4)


def test_summarise_pairs_arms_by_seed_and_type():
    scores = {
        "baseline": {s: {"count": b, "colour": 90.0} for s, b in enumerate(BASELINE)},
        "viral": {s: {"count": v, "colour": 90.0} for s, v in enumerate(VIRAL)},
    }
    summary = summarise(scores, ["count", "colour", "relation"])
    assert summary["seeds"] == [0, 1, 2] and set(summary["types"]) == {"count", "colour"}
    count = summary["types"]["count"]
    assert count["baseline"]["mean"] == 60.0 and count["viral"]["mean"] == 62.0
    assert count["paired"]["differences"] == [2.0, 3.0, 1.0]
    assert summary["types"]["colour"]["paired"]["sign_test"]["ties"] == 3
