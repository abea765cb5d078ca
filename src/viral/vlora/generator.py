"""The VLoRA perceptual-weights generator: image features in, per-sample low-rank factors out.

For every weight type t in `types` (a subset of "qkvom") a separate stack of `k` learnable
perceptual queries reads the image through `depth` pre-norm decoder blocks (self-attention over
the queries, cross-attention to the projected image features, a 4×D GELU MLP, each residual),
then a final LayerNorm and a head shared by the k queries turn each query into the factor
A `[d_in, r]` of one updated LLM layer. The second factor B `[d_out, r]` is input-independent:
one learned, zero-initialised matrix per (type, layer), so an untrained generator leaves the LLM
unchanged. The update of layer j for sample b is ΔW_b = scale · (A_b Bᵀ)ᵀ with scale = alpha / r.
"""

from __future__ import annotations

import torch
from torch import nn

# Ma et al., "Visual Perception by Large Language Model's Weights", NeurIPS 2024, arXiv 2405.20339,
# Sec. 3 (perceptual weights generator, Fig. 2): k perceptual queries → N decoder blocks → a shared
# linear layer giving ΔW's first factor, k independent (here: per-layer learned) second factors.


class WeightTypeStack(nn.Module):
    """Queries, decoder blocks, final norm and shared head for one weight type (q, k, v, o or m)."""

    def __init__(self, num_queries: int, hidden_size: int, depth: int, num_heads: int, d_in: int, rank: int):
        super().__init__()
        self.d_in = d_in
        self.rank = rank
        self.queries = nn.Parameter(torch.randn(1, num_queries, hidden_size) * 0.02)  # [1, k, D]
        self.blocks = nn.ModuleList(
            nn.TransformerDecoderLayer(
                d_model=hidden_size,
                nhead=num_heads,
                dim_feedforward=4 * hidden_size,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,  # pre-norm: x + SelfAttn(LN(x)), x + CrossAttn(LN(x), F'), x + MLP(LN(x))
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, d_in * rank)  # shared by the k queries of this type

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        """memory `[n, N, D]` (projected image features) → A `[n, k, d_in, r]`."""
        n = memory.shape[0]
        h = self.queries.repeat(n, 1, 1)  # [n, k, D] (a copy: a view of a leaf would keep requires_grad under no_grad)
        for block in self.blocks:
            h = block(h, memory)  # [n, k, D]
        a = self.head(self.norm(h))  # [n, k, d_in * r]
        return a.view(n, h.shape[1], self.d_in, self.rank)  # [n, k, d_in, r]


class PerceptualWeightsGenerator(nn.Module):
    """Turns vision features `[n, N, D_v]` into the low-rank factors of every updated LLM layer.

    `dims` maps each weight type to (d_in, d_out) of the LLM module it updates; `num_updates` is k,
    the number of updated LLM layers (= number of queries per type).
    """

    def __init__(
        self,
        vision_dim: int,
        num_patches: int,
        dims: dict[str, tuple[int, int]],
        num_updates: int,
        rank: int = 64,
        alpha: float = 64.0,
        hidden_size: int = 512,
        depth: int = 8,
        num_heads: int = 8,
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"vlora hidden_size {hidden_size} is not divisible by vlora num_heads {num_heads}")
        if num_updates < 1:
            raise ValueError("the generator needs at least one updated LLM layer (check vlora_skip_layers)")
        self.types = "".join(dims)
        self.rank = rank
        self.alpha = float(alpha)
        self.scale = self.alpha / rank
        self.num_patches = num_patches
        self.num_updates = num_updates
        self.input_proj = nn.Linear(vision_dim, hidden_size)  # D_v → D
        self.position_embedding = nn.Parameter(torch.randn(1, num_patches, hidden_size) * 0.02)  # [1, N, D]
        self.stacks = nn.ModuleDict(
            {t: WeightTypeStack(num_updates, hidden_size, depth, num_heads, d_in, rank) for t, (d_in, _) in dims.items()}
        )
        # B: one input-independent factor per (type, updated layer), zero so that ΔW starts at 0.
        self.lora_B = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros(num_updates, d_out, rank)) for t, (_, d_out) in dims.items()}  # [k, d_out, r]
        )

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """features `[n, N, D_v]` → {type: A `[n, k, d_in, r]`}."""
        if features.shape[1] != self.num_patches:
            raise ValueError(
                f"the generator was built for {self.num_patches} image patches but got {features.shape[1]}; "
                "use the image size the model was built with"
            )
        memory = self.input_proj(features) + self.position_embedding  # [n, N, D]
        return {t: stack(memory) for t, stack in self.stacks.items()}
