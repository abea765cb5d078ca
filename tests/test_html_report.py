"""`viral report`: the self-contained HTML page of a study or run folder, checked in a real headless Chromium.

The study folder is written the way `run_study` writes one (study.json from `summarise`, `mcnemar`,
`chance_levels`; per run metrics.jsonl, eval_curve.jsonl, eval/shapes.json, eval/predictions.jsonl; analysis
JSON) from seeded random answers on a real ShapesWorld benchmark, without training (test_study.py reports a
trained mini-study). The browser is Debian's chromium driven by Playwright through `executable_path`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict
from pathlib import Path

import pytest

from viral.evaluate.base import DataError, read_jsonl
from viral.report import write_html_report
from viral.study.pipeline import ARMS, StudySettings, above_chance, chance_levels, per_question
from viral.study.stats import mcnemar, summarise

CHROMIUM = Path("/usr/bin/chromium")
# the machine's closed network refuses many connections: no background services, no QUIC, no sandbox (root)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SEEDS = (0, 1, 2)
TYPES = ["accuracy", "count", "relation", "existence", "colour"]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _scores(predictions: list[dict]) -> dict[str, float]:
    def percent(rows):
        return round(100.0 * sum(r["correct"] for r in rows) / len(rows), 4)

    scores = {"accuracy": percent(predictions)}
    for name in TYPES[1:]:
        rows = [p for p in predictions if p["type"] == name]
        if rows:
            scores[name] = percent(rows)
    return scores


def write_run(run_dir: Path, questions: list[dict], rng: random.Random, p_right: float, aligned: bool) -> dict:
    """A run folder as `viral train` + ShapesBench write it, with answers right with probability `p_right`."""
    predictions = []
    for question in questions:
        correct = rng.random() < p_right
        output = question["answer"] if correct else ("no" if question["answer"] == "yes" else "yes")
        predictions.append({"question_id": question["question_id"], "prompt": question["question"], "output": output,
                            "parsed": output, "answer": question["answer"], "correct": correct,
                            "type": question["type"]})
    _write_jsonl(run_dir / "eval" / "predictions.jsonl", predictions)
    scores = _scores(predictions)
    (run_dir / "eval" / "shapes.json").write_text(json.dumps({"benchmark": "shapes", "metrics": scores}))
    _write_jsonl(run_dir / "metrics.jsonl", [
        {"step": step, "loss": 4.0 / step, "loss_lm": 4.0 / step, "loss_vra": -0.5 - 0.05 * step if aligned else None,
         "lr": 1e-3} for step in range(1, 7)])
    _write_jsonl(run_dir / "eval_curve.jsonl", [{"step": step, "questions": len(questions), "scores": scores}
                                                for step in (3, 6)])
    record = {"dir": str(run_dir), "train_seconds": 12.0, "scores": scores, "questions": len(predictions)}
    (run_dir / "run.json").write_text(json.dumps(record))
    return record


def write_study(out: Path, data: Path) -> dict:
    """A study folder shaped like `run_study`'s, from seeded random answers (VIRAL right more often)."""
    questions = read_jsonl(data / "eval.jsonl")
    rng = random.Random(0)
    runs = {str(seed): {arm: write_run(out / f"seed-{seed}" / arm, questions, rng, 0.45 if arm == "baseline" else 0.6,
                                       arm == "viral") for arm in ARMS} for seed in SEEDS}
    scores = {arm: {seed: runs[str(seed)][arm]["scores"] for seed in SEEDS} for arm in ARMS}
    chance = chance_levels(data)
    within_seed = {}
    for seed in SEEDS:
        b, v = (per_question(out / f"seed-{seed}" / arm) for arm in ARMS)
        within_seed[str(seed)] = {name: mcnemar(b[name], v[name]) for name in TYPES if name in b}
    summary = {"command": "viral study --seeds 3", "settings": asdict(StudySettings(seeds=list(SEEDS))),
               "data": str(data), "encoders": {"dir": str(out / "encoders")}, "chance": chance, "runs": runs,
               "statistics": summarise(scores, TYPES), "mcnemar_per_seed": within_seed, "seconds": {"total": 90.0}}
    summary["above_chance"] = above_chance(summary)
    (out / "study.json").write_text(json.dumps(summary, indent=2))
    layers = [0, 1, 2, 3]
    cknna = {arm: {"model_path": str(out / "seed-0" / arm), "teacher": "dinov2-vit-s", "layers": layers, "k": 5,
                   "n_images": 8, "curves": {"encoder": {"mean": [0.9, 0.7, 0.6, 0.5], "std": [0.1] * 4},
                                             "teacher": {"mean": [0.4, 0.5, 0.6 + 0.1 * (arm == "viral"), 0.4],
                                                         "std": [0.1] * 4}}} for arm in ARMS}
    (out / "analysis" / "cknna").mkdir(parents=True)
    (out / "analysis" / "cknna" / "cknna.json").write_text(json.dumps({"data": str(data), "results": cknna}))
    entropy = {arm: {"model_path": str(out / "seed-0" / arm), "n_images": 8, "layers": [1, 2, 3],
                     "mean_entropy_per_layer": [2.7, 2.5 - 0.2 * (arm == "viral"), 2.6], "max_entropy": 2.77}
               for arm in ARMS}
    (out / "analysis" / "attention").mkdir(parents=True)
    (out / "analysis" / "attention" / "attention_entropy.json").write_text(
        json.dumps({"data": str(data), "results": entropy}))
    return summary


@pytest.fixture(scope="module")
def study(tmp_path_factory, shapes_dir):
    out = tmp_path_factory.mktemp("study")
    summary = write_study(out, Path(shapes_dir))
    return out, summary, write_html_report(out)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.is_file():
        pytest.skip(f"no browser: {CHROMIUM} is missing and scripts/setup-venv.sh could not install Debian's "
                    "chromium (it needs apt-get and root)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _number(text: str) -> float:
    return float(text.replace("+", ""))


def _assert_printed(cell: str, value: float | None, digits: int = 2) -> None:
    assert value is not None and abs(_number(cell) - value) <= 0.5 * 10 ** -digits + 1e-9, (cell, value)


def _assert_p(cell: str, value: float | None) -> None:
    if cell == "<1e-4":
        assert value is not None and value < 1e-4
    else:
        assert value == pytest.approx(float(cell), rel=5e-3, abs=1e-12), (cell, value)


def test_report_page_in_a_headless_browser(study, browser):
    out, summary, path = study
    page = browser.new_page()
    problems = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    assert problems == []  # no console error, script error or failed request

    # every section of a study with analyses is there
    for section in ("#results", "#losses", "#curves", "#cknna-0", "#attention-1", "#questions"):
        assert page.locator(section).count() == 1, section

    # the table's numbers are study.json's
    rows = page.locator("#study-table tbody tr")
    assert rows.count() == len(summary["statistics"]["types"])
    intervals = 0
    for index in range(rows.count()):
        row = rows.nth(index)
        name = row.get_attribute("data-type")
        entry, cells = summary["statistics"]["types"][name], row.locator("td").all_inner_texts()
        assert cells[0] == ("all" if name == "accuracy" else name)
        if name in summary["chance"]:
            _assert_printed(cells[1], summary["chance"][name], digits=1)
        for cell, arm in ((cells[2], "baseline"), (cells[3], "viral")):
            mean, std = cell.split(" ± ")
            _assert_printed(mean, entry[arm]["mean"])
            _assert_printed(std, entry[arm]["std"])
        difference = re.fullmatch(r"([+-][\d.]+)(?: \[([+-][\d.]+), ([+-][\d.]+)\])?", cells[4])
        _assert_printed(difference.group(1), entry["paired"]["mean_difference"])
        ci = entry["paired"]["paired_t"]["ci95"]
        assert (difference.group(2) is None) == (ci is None)
        if ci:
            intervals += 1
            _assert_printed(difference.group(2), ci[0])
            _assert_printed(difference.group(3), ci[1])
        _assert_p(cells[5], entry["paired"]["paired_t"]["p_value"])
        sign = re.fullmatch(r"(\d+)\+/(\d+)- p=(\S+)", cells[6])
        assert (int(sign.group(1)), int(sign.group(2))) == (entry["paired"]["sign_test"]["positive"],
                                                            entry["paired"]["sign_test"]["negative"])
        _assert_p(sign.group(3), entry["paired"]["sign_test"]["p_value"])
    assert intervals > 0

    # the question browser: every (seed, question), thumbnails decoded, filters change the rows shown
    predictions = {(str(seed), arm): {p["question_id"]: p for p in read_jsonl(out / f"seed-{seed}" / arm / "eval" /
                                                                            "predictions.jsonl")}
                   for seed in SEEDS for arm in ARMS}
    total = sum(len(predictions[(str(seed), "baseline")]) for seed in SEEDS)
    visible = page.locator("#question-table tbody tr:visible")
    assert visible.count() == total and page.inner_text("#shown-count") == str(total)
    first_image = page.locator("#question-table tbody tr img").first
    first_image.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=first_image.element_handle(),
                           timeout=5000)
    from PIL import Image

    with Image.open(Path(summary["data"]) / first_image.get_attribute("alt")) as original:
        assert first_image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == list(original.size)

    page.select_option("#outcome-filter", "viral-only")
    wanted = [(str(seed), question_id) for seed in SEEDS
              for question_id, b in predictions[(str(seed), "baseline")].items()
              if not b["correct"] and predictions[(str(seed), "viral")][question_id]["correct"]]
    assert 0 < len(wanted) < total and visible.count() == len(wanted)
    assert page.inner_text("#shown-count") == str(len(wanted))
    for index in range(visible.count()):
        cells = visible.nth(index).locator("td")
        assert cells.nth(4).inner_text().endswith("✗") and cells.nth(5).inner_text().endswith("✓")

    page.select_option("#seed-filter", "1")
    page.select_option("#type-filter", "count")
    narrowed = [(seed, q) for seed, q in wanted if seed == "1" and predictions[(seed, "viral")][q]["type"] == "count"]
    assert visible.count() == len(narrowed)
    shown = {(visible.nth(i).get_attribute("data-seed"), visible.nth(i).locator(".id").inner_text().split(" · ")[0])
             for i in range(visible.count())}
    assert shown == set(narrowed)

    page.select_option("#outcome-filter", "")
    page.select_option("#seed-filter", "")
    page.select_option("#type-filter", "")
    assert visible.count() == total
    assert problems == []
    page.close()


def test_the_page_is_self_contained_and_caps_the_browser(study, tmp_path, capsys):
    from viral.cli import main

    out, summary, path = study
    html = path.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no network resource: data: URIs only
    assert html.count('<tr data-seed="') == sum(run["baseline"]["questions"] for run in summary["runs"].values())
    assert main(["report", str(out), "--out", str(tmp_path / "capped.html"), "--max-questions", "5"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'capped.html'}"
    capped = (tmp_path / "capped.html").read_text()
    assert capped.count('<tr data-seed="') == 5 * len(SEEDS) and "first 5 of" in capped


def test_a_run_folder_shows_what_it_has(tmp_path, shapes_dir):
    run_dir = tmp_path / "run"
    write_run(run_dir, read_jsonl(Path(shapes_dir) / "eval.jsonl"), random.Random(1), 0.5, aligned=True)
    (run_dir / "eval" / "shapes.json").write_text(json.dumps(
        {"metrics": _scores(read_jsonl(run_dir / "eval" / "predictions.jsonl")), "data": str(shapes_dir)}))
    (run_dir / "eval_curve.jsonl").unlink()
    html = write_html_report(run_dir).read_text()
    assert 'id="run-scores"' in html and 'id="losses"' in html and 'id="questions"' in html
    assert 'id="results"' not in html and 'id="curves"' not in html and 'id="cknna-' not in html
    assert 'value="right"' in html and 'value="viral-only"' not in html and 'data-image="i0"' in html

    from viral.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="neither a study folder"):
        write_html_report(empty)
    with pytest.raises(SystemExit, match=f"viral report: {empty}: neither"):
        main(["report", str(empty)])


def test_training_curves_get_a_panel_per_axis_group_the_curves_hold(tmp_path, monkeypatch):
    # eval_curve.jsonl rows carry left/right and top/bottom position beside the types; each gets its own panel,
    # titled as the study's tables name it, and a group no run's curve holds gets none
    from viral.report import figures
    from viral.report.inputs import RunData

    drawn = []
    monkeypatch.setattr(figures, "figure_uri", lambda figure: drawn.append(figure) or "data:image/png;base64,")
    rows = [{"step": step, "questions": 10, "scores": {"accuracy": 60.0, "position": 55.0 + step,
                                                      "position_horizontal": 50.0 + 2 * step}}
            for step in (100, 200)]
    runs = [RunData("baseline", tmp_path / "b", seed="0", curve=rows), RunData("viral", tmp_path / "v", seed="0")]
    assert figures.curve_figure(runs, ["accuracy", "count", "position", "position_horizontal", "position_vertical"],
                                {"position_horizontal": 50.8}, {"position_horizontal": "position: left / right"})
    titles = [axis.get_title() for axis in drawn[0].axes if axis.get_title()]
    assert titles == ["all types", "position", "position: left / right"]
    left_right = drawn[0].axes[2]
    assert [list(line.get_ydata()) for line in left_right.lines] == [[250.0, 450.0], [50.8, 50.8]]
