"""Text-to-image attention maps per layer and head, and their spatial entropy (the VIRAL paper's
attention analysis).

The query is the last prompt position, the one whose output is the answer's first token. Attention
weights need `attn_implementation="eager"` (SDPA does not return them); they are read with forward
hooks on each decoder layer's attention module, keeping only that query row at the image positions.
"""

from __future__ import annotations

import math

import torch

from viral.analysis.states import decoder_layers, image_token_mask, to_grid


def use_eager_attention(model) -> None:
    """Switch the model to eager attention so attention modules return their weights."""
    model.set_attn_implementation("eager")


@torch.no_grad()
def text_to_image_attention(model, inputs: dict) -> torch.Tensor:
    """[B, L, H, rows, cols]: attention of the last prompt position on each image token, for every
    decoder layer and head. Each map sums to the head's total attention mass on the image tokens."""
    mask = image_token_mask(model, inputs["input_ids"])  # [B, T]
    batch = mask.shape[0]
    rows_by_layer: dict[int, torch.Tensor] = {}
    handles = []

    def keep(module, args, output, layer):
        weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError(
                "the attention module returned no weights; load the model with attn_implementation='eager' "
                "(use_eager_attention(model))"
            )
        last = weights[:, :, -1, :].float()  # [B, H, T] — left padding puts every prompt's end at -1
        image = last.transpose(1, 2)[mask.to(last.device)]  # [B*N, H]
        rows_by_layer[layer] = image.reshape(batch, -1, image.shape[-1]).cpu()  # [B, N, H]

    try:
        for index, block in enumerate(decoder_layers(model)):
            handles.append(
                block.self_attn.register_forward_hook(lambda m, a, o, index=index: keep(m, a, o, index))
            )
        model(**inputs, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    per_layer = torch.stack([rows_by_layer[i] for i in sorted(rows_by_layer)], dim=1)  # [B, L, N, H]
    maps = to_grid(model, per_layer)  # [B, L, rows, cols, H]
    return maps.permute(0, 1, 4, 2, 3).contiguous()  # [B, L, H, rows, cols]


def spatial_entropy(maps: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each map normalised to a distribution over the grid: [..., rows, cols]
    → [...]. A uniform map over N cells gives log N; all mass on one cell gives 0."""
    flat = maps.flatten(start_dim=-2).double()  # [..., N]
    p = flat / flat.sum(dim=-1, keepdim=True).clamp_min(1e-300)
    return -(p * torch.log(p.clamp_min(1e-300))).sum(dim=-1)


def component_entropy(attention_map: torch.Tensor) -> float:
    """Spatial entropy as Kang et al. (2025, arXiv 2503.06287, Sec. 3) define it: binarise the map at its
    mean, find 8-connected components, and take the entropy of the components' relative sizes.
    0 when the attention forms one blob (or none); larger when it is scattered."""
    from scipy import ndimage

    values = attention_map.double().cpu().numpy()
    labels, count = ndimage.label(values > values.mean(), structure=[[1, 1, 1]] * 3)
    if count == 0:
        return 0.0
    sizes = [(labels == i).sum() for i in range(1, count + 1)]
    total = float(sum(sizes))
    return float(-sum((s / total) * math.log(s / total) for s in sizes)) + 0.0  # no -0.0


def attention_report(maps: torch.Tensor) -> dict:
    """Numbers of one sample's maps [L, H, rows, cols]: image mass, entropy, component entropy per head."""
    layers, heads = maps.shape[:2]
    return {
        "image_attention_mass": maps.flatten(start_dim=-2).sum(-1).tolist(),  # [L][H]
        "spatial_entropy": spatial_entropy(maps).tolist(),  # [L][H]
        "component_entropy": [[component_entropy(maps[l, h]) for h in range(heads)] for l in range(layers)],
        "max_entropy": math.log(maps.shape[-1] * maps.shape[-2]),
    }


def dataset_entropy(predictor, examples, batch_size: int = 8) -> dict:
    """Mean spatial entropy per layer and per (layer, head) over a dataset, for comparing checkpoints."""
    from viral.analysis.report import batches

    use_eager_attention(predictor.model)
    entropies, components, masses = [], [], []
    for chunk in batches(list(examples), batch_size):
        inputs = predictor.prepare([e.image for e in chunk], [e.question for e in chunk])
        maps = text_to_image_attention(predictor.model, inputs)  # [B, L, H, rows, cols]
        entropies.append(spatial_entropy(maps))  # [B, L, H]
        masses.append(maps.flatten(start_dim=-2).sum(-1).double())
        components.append(torch.tensor([[[component_entropy(m) for m in layer] for layer in sample]
                                        for sample in maps], dtype=torch.float64))
    entropy = torch.cat(entropies)  # [n, L, H]
    component = torch.cat(components)
    mass = torch.cat(masses)
    return {
        "n_images": entropy.shape[0],
        "layers": list(range(1, entropy.shape[1] + 1)),
        "mean_entropy_per_layer": entropy.mean(dim=(0, 2)).tolist(),
        "mean_entropy_per_head": entropy.mean(dim=0).tolist(),
        "mean_component_entropy_per_layer": component.mean(dim=(0, 2)).tolist(),
        "mean_image_attention_mass_per_layer": mass.mean(dim=(0, 2)).tolist(),
        "max_entropy": math.log(maps.shape[-1] * maps.shape[-2]),
    }


def plot_attention(image, maps: torch.Tensor, report: dict, path, title: str = "") -> None:
    """The image, the head-averaged attention map of every layer, and the per-head entropy heatmap."""
    from viral.analysis.report import new_figure, save_figure

    layers, heads = maps.shape[:2]
    columns = layers + 1
    fig = new_figure(figsize=(2.0 * columns, 4.6))
    grid = fig.add_gridspec(2, columns, height_ratios=[1.0, 1.0])
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(image)
    ax.set_title("image", fontsize=9)
    ax.axis("off")
    for layer in range(layers):
        mean_map = maps[layer].mean(dim=0)  # [rows, cols]
        ax = fig.add_subplot(grid[0, layer + 1])
        ax.imshow(mean_map.numpy(), cmap="inferno")
        ax.set_title(f"layer {layer + 1}\nH={float(spatial_entropy(mean_map)):.2f}", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    entropy = torch.tensor(report["spatial_entropy"]).T  # [H, L]
    image_plot = ax.imshow(entropy.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=report["max_entropy"])
    ax.set_xticks(range(layers), [str(i + 1) for i in range(layers)])
    ax.set_yticks(range(heads), [str(h) for h in range(heads)])
    ax.set_xlabel("layer")
    ax.set_ylabel("head")
    ax.set_title(f"spatial entropy per head (nats; uniform = {report['max_entropy']:.2f})", fontsize=9)
    fig.colorbar(image_plot, ax=ax, fraction=0.02)
    if layers * heads <= 128:
        for h in range(heads):
            for layer in range(layers):
                ax.text(layer, h, f"{float(entropy[h, layer]):.2f}", ha="center", va="center", fontsize=7,
                        color="black" if float(entropy[h, layer]) > 0.6 * report["max_entropy"] else "white")
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def plot_dataset_entropy(results: dict[str, dict], path) -> None:
    """Mean spatial entropy per layer, one line per checkpoint."""
    from viral.analysis.report import new_figure, save_figure

    fig = new_figure(figsize=(7, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for label, result in results.items():
        ax.plot(result["layers"], result["mean_entropy_per_layer"], marker="o", markersize=3, label=label)
    first = next(iter(results.values()))
    ax.axhline(first["max_entropy"], color="grey", linestyle=":", label="uniform")
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("LLM layer")
    ax.set_ylabel("mean spatial entropy of text→image attention (nats)")
    ax.set_title(f"Lower = more focused attention ({first['n_images']} images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_attention_heads(maps: torch.Tensor, path) -> None:
    """Every head's map: one row per layer, one column per head, each on its own colour scale."""
    from viral.analysis.report import new_figure, save_figure

    layers, heads = maps.shape[:2]
    fig = new_figure(figsize=(1.3 * heads + 0.8, 1.3 * layers + 0.6))
    for layer in range(layers):
        for head in range(heads):
            ax = fig.add_subplot(layers, heads, layer * heads + head + 1)
            ax.imshow(maps[layer, head].numpy(), cmap="inferno")
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=7)
            if head == 0:
                ax.set_ylabel(f"layer {layer + 1}", fontsize=7)
    save_figure(fig, path)
