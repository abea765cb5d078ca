"""Patch-shuffle robustness (the VIRAL paper's Table 3): accuracy when the order of the image tokens
entering the LLM is permuted, against the original order.

The permutation is applied by a forward hook on the multimodal projector, on its output's token
axis ([num_images, N, D]), so the LLM sees the same image tokens at permuted positions. Each image
gets its own permutation from one seeded generator; "identity" leaves the order unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

PERMUTATIONS = {
    "random": lambda n, generator: torch.randperm(n, generator=generator),
    "reverse": lambda n, generator: torch.arange(n - 1, -1, -1),
    "identity": lambda n, generator: torch.arange(n),
}


def make_permutation(name: str):
    """A function (n, generator) -> [n] index permutation, by name."""
    try:
        return PERMUTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown permutation {name!r}; choose one of {sorted(PERMUTATIONS)}") from None


@contextmanager
def permuted_image_tokens(model, permutation: str = "random", seed: int = 0):
    """Within the block, every image's tokens reach the LLM in a permuted order."""
    permute = make_permutation(permutation)
    generator = torch.Generator().manual_seed(seed)

    def hook(module, args, output):
        # output: [num_images, N, D]
        order = torch.stack([permute(output.shape[1], generator) for _ in range(output.shape[0])])  # [I, N]
        order = order.to(output.device)
        return torch.gather(output, 1, order[..., None].expand_as(output))

    handle = model.model.multi_modal_projector.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def shuffle_accuracy(predictor, benchmark: str, data, permutation: str = "random", seed: int = 0,
                     limit: int | None = None, batch_size: int = 8, output_dir=None) -> dict:
    """Score `benchmark` (a `viral.evaluate` benchmark read from `data`) with the original and with the
    permuted image-token order; `drop` is the headline metric's difference in points (original - shuffled).
    With `output_dir`, each run's summary and predictions go to `original/` and `shuffled/` under it."""
    from pathlib import Path

    from viral.evaluate import evaluate

    def run(name: str) -> dict:
        output = Path(output_dir) / name / "summary.json" if output_dir is not None else None
        return evaluate(predictor, benchmark, data, output=output, limit=limit, batch_size=batch_size,
                        progress=False)

    original = run("original")
    with permuted_image_tokens(predictor.model, permutation, seed):
        shuffled = run("shuffled")
    headline = original["headline"]["metric"]
    keep = ("headline", "metrics", "counts")
    return {
        "benchmark": original["benchmark"],
        "headline": headline,
        "permutation": permutation,
        "seed": seed,
        "n": original["counts"]["evaluated"],
        "original": {key: original[key] for key in keep},
        "shuffled": {key: shuffled[key] for key in keep},
        "drop": original["headline"]["value"] - shuffled["headline"]["value"],
    }


def _bars(result: dict) -> list[tuple[str, float, float]]:
    """(name, original, shuffled) for the headline metric and each top-level numeric sub-metric."""
    original, shuffled = result["original"]["metrics"], result["shuffled"]["metrics"]
    bars = [(result["headline"], result["original"]["headline"]["value"], result["shuffled"]["headline"]["value"])]
    for name, value in original.items():
        if name != result["headline"] and isinstance(value, (int, float)) and isinstance(shuffled.get(name), (int, float)):
            bars.append((name, float(value), float(shuffled[name])))
    return bars


def plot_shuffle(results: dict[str, dict], path) -> None:
    """Grouped bars: original vs shuffled score per checkpoint, headline metric first, then sub-metrics."""
    from viral.analysis.report import new_figure, save_figure

    labels, original, shuffled = [], [], []
    for label, result in results.items():
        for name, before, after in _bars(result):
            labels.append(f"{label}\n{name}" if len(results) > 1 else name)
            original.append(before)
            shuffled.append(after)
    fig = new_figure(figsize=(max(5.0, 1.1 * len(labels) + 1.5), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    positions = list(range(len(labels)))
    ax.bar([p - 0.2 for p in positions], original, width=0.4, label="original order")
    ax.bar([p + 0.2 for p in positions], shuffled, width=0.4, label="image tokens permuted")
    top = max([*original, *shuffled, 1.0])
    for p, (a, b) in zip(positions, zip(original, shuffled)):
        ax.text(p, max(a, b) + 0.02 * top, f"drop {a - b:+.1f}", ha="center", fontsize=7)
    ax.set_xticks(positions, labels, fontsize=8)
    ax.set_ylim(0, top * 1.15)
    first = next(iter(results.values()))
    ax.set_ylabel("score (%)")
    ax.set_title(f"{first['benchmark']}: patch shuffling ({first['permutation']}, seed {first['seed']}, "
                 f"n={first['n']})")
    ax.legend(fontsize=8)
    save_figure(fig, path)
