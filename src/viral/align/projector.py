"""The alignment projector P_pi: LLM hidden size -> teacher feature size, one per target layer or shared."""

from __future__ import annotations

import torch
from torch import nn


class AlignmentProjector(nn.Sequential):
    """Linear - SiLU - Linear - SiLU - Linear (hidden -> projector_dim -> projector_dim -> z_dim), as VIRAL."""

    def __init__(self, hidden_size: int, projector_dim: int, z_dim: int):
        super().__init__(
            nn.Linear(hidden_size, projector_dim),
            nn.SiLU(),
            nn.Linear(projector_dim, projector_dim),
            nn.SiLU(),
            nn.Linear(projector_dim, z_dim),
        )


class AlignmentHead(nn.Module):
    """The projectors of all target layers: separate (`use_multiple_projectors`) or one shared."""

    def __init__(self, target_layers: list[int], hidden_size: int, projector_dim: int, z_dim: int,
                 use_multiple_projectors: bool = False):
        super().__init__()
        self.target_layers = [int(layer) for layer in target_layers]
        count = len(self.target_layers) if use_multiple_projectors else 1
        self.projectors = nn.ModuleList(AlignmentProjector(hidden_size, projector_dim, z_dim) for _ in range(count))
        self.config = {
            "target_layers": self.target_layers, "hidden_size": hidden_size, "projector_dim": projector_dim,
            "z_dim": z_dim, "use_multiple_projectors": use_multiple_projectors,
        }

    def projector_for(self, layer: int) -> AlignmentProjector:
        """The projector that maps target layer `layer`'s states."""
        return self.projectors[self.target_layers.index(layer) if len(self.projectors) > 1 else 0]

    def project(self, layer: int, states: torch.Tensor) -> torch.Tensor:
        """`[B_img, N, hidden]` states of target layer `layer` -> `[B_img, N, z_dim]`."""
        projector = self.projector_for(layer)
        return projector(states.to(projector[0].weight.dtype))

    def forward(self, states: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """`{layer: [B_img, N, hidden]}` -> `{layer: [B_img, N, z_dim]}`."""
        return {layer: self.project(layer, states[layer]) for layer in self.target_layers}
