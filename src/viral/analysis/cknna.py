"""CKNNA: mutual k-nearest-neighbour kernel alignment between two sets of features.

Huh, Cheung, Wang, Isola (2024), "The Platonic Representation Hypothesis", arXiv 2405.07987,
Sec. A.4: CKA restricted to pairs (i, j) that are k-nearest neighbours of each other in *both*
representations, with the unbiased HSIC estimator of Song et al. (2012), JMLR 13, eq. 5.

    alpha_ij   = 1[i != j, j in knn_K(i), j in knn_L(i)]           (knn by kernel value, self excluded)
    Align(K,L) = HSIC_u(alpha * K, alpha * L)
    CKNNA      = Align(K, L) / sqrt(Align_K(K, K) * Align_L(L, L))  (self-alignments use their own knn)

with linear kernels K = A Aᵀ, L = B Bᵀ on L2-normalised rows (the paper's measurement pipeline).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _knn_mask(gram: torch.Tensor, k: int) -> torch.Tensor:
    """[n, n] bool: row i marks the k samples with the largest kernel value to i, i itself excluded."""
    n = gram.shape[0]
    scores = gram.clone()
    scores.fill_diagonal_(float("-inf"))
    neighbours = scores.topk(k, dim=1).indices  # [n, k]
    mask = torch.zeros(n, n, dtype=torch.bool, device=gram.device)
    mask.scatter_(1, neighbours, True)
    return mask


def hsic_unbiased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC estimator (Song et al. 2012, eq. 5) of two [m, m] kernel matrices, m >= 4.

    HSIC_u = [tr(K~ L~) + 1ᵀK~1 · 1ᵀL~1 / ((m-1)(m-2)) - 2/(m-2) · 1ᵀ K~ L~ 1] / (m (m-3)),
    where K~, L~ are K, L with zeroed diagonals.
    """
    m = K.shape[0]
    Kt = K.clone()
    Kt.fill_diagonal_(0)
    Lt = L.clone()
    Lt.fill_diagonal_(0)
    trace_term = (Kt * Lt.T).sum()  # tr(K~ L~)
    sum_term = Kt.sum() * Lt.sum() / ((m - 1) * (m - 2))
    cross_term = 2.0 * (Kt.sum(dim=0) @ Lt.sum(dim=1)) / (m - 2)  # 1ᵀ K~ L~ 1
    return (trace_term + sum_term - cross_term) / (m * (m - 3))


def cknna(feats_a: torch.Tensor, feats_b: torch.Tensor, k: int = 10, *, normalize: bool = True) -> float:
    """CKNNA between two representations of the same n samples: `feats_a` [n, d_a], `feats_b` [n, d_b].

    1 when both induce the same kernel on their shared k-nearest-neighbour pairs, near 0 when unrelated.
    Invariant to orthogonal transforms and isotropic scaling of either side. `normalize` L2-normalises
    each row first, as the paper's measurement code does; computed in float64.
    Returns NaN if a self-alignment is not positive (degenerate features, e.g. all rows equal).
    """
    if feats_a.ndim != 2 or feats_b.ndim != 2:
        raise ValueError(
            f"cknna expects two [n, d] tensors; got shapes {tuple(feats_a.shape)} and {tuple(feats_b.shape)}"
        )
    n = feats_a.shape[0]
    if feats_b.shape[0] != n:
        raise ValueError(f"cknna needs the same samples on both sides; got {n} and {feats_b.shape[0]} rows")
    if n < 4:
        raise ValueError(f"cknna needs at least 4 samples (unbiased HSIC); got {n}")
    if not 2 <= k < n:
        raise ValueError(f"cknna needs 2 <= k < n; got k={k} with n={n} samples")

    a = feats_a.detach().to(torch.float64)
    b = feats_b.detach().to(torch.float64)
    if normalize:
        a = F.normalize(a, dim=-1)
        b = F.normalize(b, dim=-1)
    K = a @ a.T  # [n, n]
    L = b @ b.T  # [n, n]
    mask_k = _knn_mask(K, k)
    mask_l = _knn_mask(L, k)

    def align(mask: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> float:
        return float(hsic_unbiased(X * mask, Y * mask))

    cross = align(mask_k & mask_l, K, L)
    self_k = align(mask_k, K, K)
    self_l = align(mask_l, L, L)
    if self_k <= 0 or self_l <= 0:
        return float("nan")
    return cross / math.sqrt(self_k * self_l)


# --- layer-wise CKNNA of an MLLM (the VIRAL paper's Fig. 2) ---------------------------------------


def layer_cknna(predictor, examples, k: int = 10, teacher=None, batch_size: int = 8) -> dict:
    """CKNNA per LLM layer 0..L between the image-token states and reference features, per image
    (n = the image's tokens), averaged over images.

    References: "encoder" — the vision features z entering the projector; "teacher" — the features of
    `teacher` (`.features(images) -> [B, N, D_z]` on the student grid, see `viral.align.teachers`).
    Returns {"layers", "k", "n_images", "curves": {reference: {"mean": [...], "std": [...]}}}.
    """
    from viral.analysis.report import batches
    from viral.data.images import apply_aspect
    from viral.analysis.states import image_states, num_llm_layers

    model = predictor.model
    layers = list(range(num_llm_layers(model) + 1))
    scores: dict[str, list[list[float]]] = {}
    for chunk in batches(list(examples), batch_size):
        images = [example.image for example in chunk]
        inputs = predictor.prepare(images, [example.question for example in chunk])
        states = image_states(model, inputs, layers)
        references = {"encoder": states["encoder"]}  # [B, N, D_z]
        if teacher is not None:
            # the teacher sees the square the student sees (padded with the mean colour in `pad` mode), as in
            # training; `features` then applies the teacher's own resize and normalisation
            seen = [apply_aspect(image.convert("RGB"), predictor.image_aspect, predictor.processor.image_processor)
                    for image in images]
            with torch.no_grad():
                references["teacher"] = teacher.features(seen).detach().float().cpu()  # [B, N, D_t]
        for name, reference in references.items():
            per_layer = scores.setdefault(name, [[] for _ in layers])
            for layer in layers:
                for b in range(len(chunk)):
                    per_layer[layer].append(cknna(states[layer][b], reference[b], k=k))
    curves = {}
    for name, per_layer in scores.items():
        values = torch.tensor(per_layer, dtype=torch.float64)  # [L+1, n_images]
        curves[name] = {
            "mean": values.nanmean(dim=1).tolist(),
            "std": values.std(dim=1).tolist() if values.shape[1] > 1 else [0.0] * len(layers),
        }
    return {"layers": layers, "k": k, "n_images": len(examples), "curves": curves}


def plot_layer_cknna(results: dict[str, dict], path) -> None:
    """One line per (checkpoint, reference) over LLM layers; `results` maps a checkpoint label to the
    output of `layer_cknna`."""
    from viral.analysis.report import new_figure, save_figure

    fig = new_figure(figsize=(7, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    styles = {"encoder": "-", "teacher": "--"}
    for index, (label, result) in enumerate(results.items()):
        for reference, curve in result["curves"].items():
            ax.plot(result["layers"], curve["mean"], styles.get(reference, ":"), color=f"C{index}", marker="o",
                    markersize=3, label=f"{label} vs {reference}")
    first = next(iter(results.values()))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("LLM layer (0 = input embeddings, L = after the final norm)")
    ax.set_ylabel(f"CKNNA (k={first['k']})")
    ax.set_title(f"Image-token states vs reference features ({first['n_images']} images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
