"""PCA maps: the first three principal components of one layer's image-token states, shown as RGB on
the patch grid (the VIRAL paper's qualitative figure; structured, object-aligned colours mean the
layer still carries spatial visual structure)."""

from __future__ import annotations

import torch

from viral.analysis.states import image_states, num_llm_layers, to_grid


def pca_rgb(states: torch.Tensor, components: int = 3) -> tuple[torch.Tensor, list[float]]:
    """[N, D] states → ([N, 3] colours in [0, 1], explained-variance ratio of the components).

    Each component is min-max scaled to [0, 1] and its sign fixed so its largest |projection| is
    positive, which makes the colours deterministic."""
    x = states.double()
    x = x - x.mean(dim=0, keepdim=True)  # [N, D]
    _, singular, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(components, vh.shape[0])
    projection = x @ vh[:k].T  # [N, k]
    largest = projection.abs().argmax(dim=0)  # [k]
    signs = torch.sign(projection[largest, torch.arange(k)])
    projection = projection * torch.where(signs == 0, torch.ones_like(signs), signs)
    low = projection.min(dim=0).values
    span = (projection.max(dim=0).values - low).clamp_min(1e-12)
    colours = (projection - low) / span  # [N, k]
    if k < components:
        colours = torch.cat([colours, torch.zeros(colours.shape[0], components - k, dtype=colours.dtype)], dim=1)
    variance = singular ** 2
    ratio = (variance[:k] / variance.sum().clamp_min(1e-300)).tolist()
    return colours.float(), ratio


def pca_maps(predictor, image, prompt: str, layers: list[int]) -> dict:
    """{layer: {"rgb": [rows, cols, 3], "explained_variance_ratio": [3 floats]}} for one image."""
    model = predictor.model
    top = num_llm_layers(model)
    for layer in layers:
        if not 0 <= layer <= top:
            raise ValueError(f"--layer {layer} is out of range 0..{top} (0 = LLM input embeddings)")
    inputs = predictor.prepare([image], [prompt])
    states = image_states(model, inputs, layers)
    out = {}
    for layer in layers:
        colours, ratio = pca_rgb(states[layer][0])  # [N, 3]
        out[layer] = {"rgb": to_grid(model, colours), "explained_variance_ratio": ratio}
    return out


def plot_pca(image, maps_by_model: dict[str, dict], path, title: str = "") -> None:
    """The image beside one RGB PCA map per layer; one row per checkpoint (`{label: pca_maps(...)}`)."""
    from viral.analysis.report import new_figure, save_figure

    columns = 1 + max(len(maps) for maps in maps_by_model.values())
    rows = len(maps_by_model)
    fig = new_figure(figsize=(2.6 * columns, 2.9 * rows))
    for row, (label, maps) in enumerate(maps_by_model.items()):
        ax = fig.add_subplot(rows, columns, row * columns + 1)
        ax.imshow(image)
        ax.set_title("image" if rows == 1 else label, fontsize=9)
        ax.axis("off")
        for col, (layer, result) in enumerate(maps.items(), start=2):
            ax = fig.add_subplot(rows, columns, row * columns + col)
            ax.imshow(result["rgb"].numpy(), interpolation="nearest")
            explained = sum(result["explained_variance_ratio"])
            ax.set_title(f"layer {layer}: PC1-3 as RGB\n({explained:.0%} of variance)", fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
