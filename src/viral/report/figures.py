"""The report's figures as `data:` URIs (matplotlib, Agg backend), so the page needs no other file.

Training curves are drawn here from the runs' files; the CKNNA and attention-entropy plots are the
analysis modules' own (`plot_layer_cknna`, `plot_dataset_entropy`), redrawn from their JSON.
"""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path
from typing import Any

from viral.report.inputs import RunData

ARM_STYLES = {"baseline": "-", "viral": "--"}
ARM_LABELS = {"baseline": "baseline", "viral": "VIRAL"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(payload).decode("ascii")


def figure_uri(figure) -> str:
    """An SVG `data:` URI of a matplotlib figure (which is then closed)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    return data_uri(buffer.getvalue(), "image/svg+xml")


def thumbnail_uri(path: Path, size: int = 96) -> str:
    """A JPEG `data:` URI of the image, its longer side at most `size` pixels."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    return data_uri(buffer.getvalue(), "image/jpeg")


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(int(row["step"]), float(row[key])) for row in rows if row.get(key) is not None and "step" in row]
    return [s for s, _ in points], [v for _, v in points]


def _arm(run: RunData) -> str:
    return run.label if run.label in ARM_STYLES else "baseline"


def loss_figure(runs: list[RunData]) -> str | None:
    """L_LM (log scale) of every run, and L_VRA where it was logged; one line per run, colour by seed."""
    with_lm = [run for run in runs if _series(run.metrics, "loss_lm")[0]]
    with_vra = [run for run in runs if _series(run.metrics, "loss_vra")[0]]
    if not with_lm and not with_vra:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2 if with_vra else 1, figsize=(11 if with_vra else 6, 3.6), squeeze=False)
    seeds = sorted({run.seed for run in runs}, key=str)
    lm_axis = axes[0][0]
    for run in with_lm:
        steps, values = _series(run.metrics, "loss_lm")
        lm_axis.plot(steps, values, ARM_STYLES[_arm(run)], color=f"C{seeds.index(run.seed) % 10}", linewidth=1.2,
                     label=_run_label(run))
    lm_axis.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    lm_axis.yaxis.set_major_formatter(plain)
    lm_axis.yaxis.set_minor_formatter(plain)
    lm_axis.set_xlabel("training step")
    lm_axis.set_ylabel("L_LM (next-token cross-entropy)")
    lm_axis.set_title("language-model loss")
    if with_vra:
        vra_axis = axes[0][1]
        for run in with_vra:
            steps, values = _series(run.metrics, "loss_vra")
            vra_axis.plot(steps, values, ARM_STYLES[_arm(run)], color=f"C{seeds.index(run.seed) % 10}",
                          linewidth=1.2, label=_run_label(run))
        vra_axis.set_xlabel("training step")
        vra_axis.set_ylabel("L_VRA (negative cosine with the teacher)")
        vra_axis.set_title("alignment loss")
    for axis in axes[0]:
        axis.grid(alpha=0.3)
        if len(axis.lines) <= 12:
            axis.legend(fontsize=7)
    return figure_uri(figure)


def _run_label(run: RunData) -> str:
    name = ARM_LABELS.get(run.label, run.label)
    return name if run.seed is None else f"seed {run.seed} {name}"


def curve_figure(runs: list[RunData], types: list[str], chance: dict[str, float],
                 titles: dict[str, str] | None = None) -> str | None:
    """ShapesBench during training (eval_curve.jsonl): one panel per type (or axis group, titled by `titles`)
    that some run's curve holds, one line per run, chance dotted."""
    with_curve = [run for run in runs if run.curve]
    types = [name for name in types if any(name in row.get("scores", {}) for run in with_curve for row in run.curve)]
    if not types:
        return None
    plt = _pyplot()
    columns = min(len(types), 3)
    rows = (len(types) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    seeds = sorted({run.seed for run in runs}, key=str)
    for index, name in enumerate(types):
        axis = axes[index // columns][index % columns]
        for run in with_curve:
            points = [(int(row["step"]), float(row["scores"][name])) for row in run.curve
                      if name in row.get("scores", {})]
            axis.plot([s for s, _ in points], [v for _, v in points], ARM_STYLES[_arm(run)], marker="o", markersize=3,
                      color=f"C{seeds.index(run.seed) % 10}", label=_run_label(run))
        if name in chance:
            axis.axhline(chance[name], color="grey", linestyle=":", linewidth=1, label="chance")
        axis.set_title("all types" if name == "accuracy" else (titles or {}).get(name, name))
        axis.set_ylim(0, 100)
        axis.set_xlabel("training step")
        axis.set_ylabel("accuracy (%)")
        axis.grid(alpha=0.3)
    for index in range(len(types), rows * columns):
        axes[index // columns][index % columns].axis("off")
    if len(axes[0][0].lines) <= 12:
        axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    return figure_uri(figure)


def _png_from_plot(plot, results: dict[str, Any]) -> str:
    """Run an analysis plotting function (it writes a PNG file) and return that PNG as a `data:` URI."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "plot.png"
        plot(results, path)
        return data_uri(path.read_bytes(), "image/png")


def cknna_figure(results: dict[str, Any]) -> str:
    """`viral analyze cknna`'s plot of its JSON's `results`."""
    from viral.analysis.cknna import plot_layer_cknna

    return _png_from_plot(plot_layer_cknna, results)


def attention_figure(results: dict[str, Any]) -> str:
    """`viral analyze attention --data`'s plot of its JSON's `results`."""
    from viral.analysis.attention import plot_dataset_entropy

    return _png_from_plot(plot_dataset_entropy, results)
