"""Patch-shuffle robustness (the VIRAL paper's Table 3): accuracy when the order of the image tokens
entering the LLM is permuted, against the original order.

The permutation is applied by a forward hook on the multimodal projector, on its output's token
axis ([num_images, N, D]), so the LLM sees the same image tokens at permuted positions. Each image
gets its own permutation from one seeded generator; "identity" leaves the order unchanged.
"""

from __future__ import annotations

import re
import string
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


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    return re.sub(r"\s+", " ", str(text).lower().translate(_PUNCTUATION)).strip()


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the normalised prediction equals the answer or starts with it as a word."""
    prediction, answer = normalize_answer(prediction), normalize_answer(answer)
    return float(prediction == answer or prediction.startswith(answer + " "))


def accuracy(predictor, examples, score=exact_match, batch_size: int = 8, max_new_tokens: int = 8) -> dict:
    """Greedy answers for `examples` scored against their answers: overall and per question type."""
    from viral.analysis.report import batches

    scores, by_type = [], {}
    for chunk in batches(list(examples), batch_size):
        answers = predictor.generate([e.image for e in chunk], [e.question for e in chunk],
                                     max_new_tokens=max_new_tokens, temperature=0.0)
        for example, prediction in zip(chunk, answers):
            value = float(score(prediction, example.answer))
            scores.append(value)
            by_type.setdefault(example.type or "all", []).append(value)
    return {
        "accuracy": sum(scores) / max(len(scores), 1),
        "per_type": {name: sum(v) / len(v) for name, v in sorted(by_type.items())},
        "n": len(scores),
    }


def shuffle_accuracy(predictor, examples, permutation: str = "random", seed: int = 0, score=exact_match,
                     batch_size: int = 8, max_new_tokens: int = 8) -> dict:
    """Accuracy with the original and with the permuted image-token order, and the drop between them."""
    missing = [e.id for e in examples if e.answer is None]
    if missing:
        raise ValueError(f"examples without a reference answer cannot be scored: {missing[:5]}")
    original = accuracy(predictor, examples, score, batch_size, max_new_tokens)
    with permuted_image_tokens(predictor.model, permutation, seed):
        shuffled = accuracy(predictor, examples, score, batch_size, max_new_tokens)
    return {
        "permutation": permutation,
        "seed": seed,
        "n": original["n"],
        "original": original,
        "shuffled": shuffled,
        "drop": original["accuracy"] - shuffled["accuracy"],
    }


def plot_shuffle(results: dict[str, dict], path) -> None:
    """Grouped bars: original vs shuffled accuracy per checkpoint (and per question type)."""
    from viral.analysis.report import new_figure, save_figure

    labels, original, shuffled = [], [], []
    for label, result in results.items():
        types = result["original"]["per_type"]
        keys = ["all"] + ([t for t in types] if len(types) > 1 else [])
        for key in keys:
            labels.append(label if key == "all" else f"{label}\n{key}")
            original.append(result["original"]["accuracy"] if key == "all" else types[key])
            shuffled.append(result["shuffled"]["accuracy"] if key == "all" else result["shuffled"]["per_type"][key])
    fig = new_figure(figsize=(max(5.0, 1.3 * len(labels) + 1.5), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    positions = range(len(labels))
    ax.bar([p - 0.2 for p in positions], original, width=0.4, label="original order")
    ax.bar([p + 0.2 for p in positions], shuffled, width=0.4, label="image tokens permuted")
    for p, (a, b) in enumerate(zip(original, shuffled)):
        ax.text(p, max(a, b) + 0.02, f"drop {a - b:+.2f}", ha="center", fontsize=8)
    ax.set_xticks(list(positions), labels, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    first = next(iter(results.values()))
    ax.set_title(f"Patch shuffling ({first['permutation']}, seed {first['seed']}, n={first['n']})")
    ax.legend(fontsize=8)
    save_figure(fig, path)
