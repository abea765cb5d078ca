"""Per-sample low-rank updates of a transformers decoder, applied through forward hooks.

For an updated layer j and weight type t the hooked module's output gains, for each sample b that
has an image, Δy_b = scale · (x_b A_b) Bᵀ, with x the module's input. This equals running that
sample through a copy of the layer whose weight is W + scale · (A_b Bᵀ)ᵀ, without ever merging
into W (the batch holds a different update per sample, and text-only samples get none).

Hooked modules per type: q, k, v → `self_attn.{q,k,v}_proj` (input: the normed hidden state);
o → `self_attn.o_proj` (input: the attention output); m → `mlp` as a whole (input: the MLP's
input, the update is added to its output). The hooks sit on the plain `nn.Linear`/MLP modules,
so a peft LoRA wrapper added later (which calls the same module as `base_layer`) keeps them.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

VLORA_TYPES = "qkvom"
_MODULE_PATHS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj", "m": "mlp"}


def check_types(types: str) -> str:
    """Validate a `vlora_types` string such as "qkvom" and return it in canonical order."""
    unknown = sorted(set(types) - set(VLORA_TYPES))
    if unknown or not types:
        raise ValueError(f"vlora_types {types!r}: use a non-empty subset of {VLORA_TYPES!r} (unknown: {unknown})")
    return "".join(t for t in VLORA_TYPES if t in types)


def updated_layers(num_layers: int, skip_layers: int) -> list[int]:
    """0-based decoder layers that receive an update: every `skip_layers`-th, the first at skip_layers-1."""
    if skip_layers < 1:
        raise ValueError(f"vlora_skip_layers is {skip_layers}; it must be >= 1")
    layers = [i for i in range(num_layers) if (i + 1) % skip_layers == 0]
    if not layers:
        raise ValueError(f"vlora_skip_layers {skip_layers} exceeds the LLM's {num_layers} layers: no layer is updated")
    return layers


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM (also through a peft wrapper)."""
    model = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"cannot find the decoder layers of {type(model).__name__}: expected `.get_decoder().layers`")
    return layers


def target_module(layer: nn.Module, weight_type: str) -> nn.Module:
    """The module of `layer` that weight type q/k/v/o/m updates (the base layer under a peft wrapper)."""
    module = layer.get_submodule(_MODULE_PATHS[weight_type])
    return module.base_layer if hasattr(module, "base_layer") else module


def weight_dims(llm: nn.Module, types: str) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) per weight type, read from the first decoder layer (GQA: k/v d_out = kv_heads·head_dim)."""
    layer = decoder_layers(llm)[0]
    dims = {}
    for t in check_types(types):
        module = target_module(layer, t)
        if t == "m":
            linear = target_module(layer, "q")
            dims[t] = (linear.in_features, linear.in_features)  # hidden → hidden, around the MLP
        else:
            dims[t] = (module.in_features, module.out_features)
    return dims


def low_rank_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """Δy = scale · (x A) Bᵀ per sample: x `[n, S, d_in]`, A `[n, d_in, r]`, B `[d_out, r]` → `[n, S, d_out]`."""
    xa = torch.einsum("nsi,nir->nsr", x, a.to(x.dtype))  # [n, S, r]
    return scale * torch.einsum("nsr,or->nso", xa, b.to(x.dtype))  # [n, S, d_out]


@dataclass
class _Updates:
    """The factors in force for the current batch."""

    a: dict[str, torch.Tensor]  # type → [n, k, d_in, r], one row per sample with an image
    b: dict[str, torch.Tensor]  # type → [k, d_out, r]
    rows: torch.Tensor  # [n] batch rows that have an image
    batch_size: int  # B, the batch the rows index into
    scale: float


class LowRankInjector:
    """Owns the forward hooks on the updated layers and the per-batch factors they read."""

    def __init__(self, llm: nn.Module, layers: list[int], types: str):
        self.types = check_types(types)
        self.layers = list(layers)
        self._updates: _Updates | None = None
        self._handles = []
        all_layers = decoder_layers(llm)
        for j, index in enumerate(self.layers):
            for t in self.types:
                module = target_module(all_layers[index], t)
                self._handles.append(module.register_forward_hook(self._make_hook(t, j), with_kwargs=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextmanager
    def updates(
        self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rows: torch.Tensor, batch_size: int, scale: float
    ) -> Iterator[None]:
        """Apply the given factors to every forward inside the block; rows without an image stay unchanged."""
        previous = self._updates
        self._updates = _Updates(a, b, rows, batch_size, scale)
        try:
            yield
        finally:
            self._updates = previous

    def checkpoint_contexts(self):
        """`context_fn` for torch.utils.checkpoint (non-reentrant): the recomputation during backward,
        which runs after `updates` has exited, sees the factors that were in force at forward time."""
        return nullcontext(), self._restored(self._updates)

    @contextmanager
    def _restored(self, updates: _Updates | None) -> Iterator[None]:
        previous = self._updates
        self._updates = updates
        try:
            yield
        finally:
            self._updates = previous

    def _rows_and_factors(self, t: str, j: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows and A `[n', d_in, r]` for a module input of `batch` rows (generation may repeat each sample)."""
        u = self._updates
        a = u.a[t][:, j]  # [n, d_in, r]
        if batch == u.batch_size:
            return u.rows, a
        if batch % u.batch_size:
            raise RuntimeError(f"VLoRA updates were set for a batch of {u.batch_size} but a layer saw {batch} rows")
        repeat = batch // u.batch_size  # e.g. num_return_sequences / beams: sample i → rows i·e … i·e+e-1
        rows = (u.rows[:, None] * repeat + torch.arange(repeat, device=u.rows.device)).flatten()
        return rows, a.repeat_interleave(repeat, dim=0)

    def _make_hook(self, t: str, j: int):
        def hook(module, args, kwargs, output):
            if self._updates is None or self._updates.rows.numel() == 0:
                return None
            x = args[0] if args else next(iter(kwargs.values()))  # [B, S, d_in]
            rows, a = self._rows_and_factors(t, j, x.shape[0])
            delta = low_rank_delta(x[rows], a, self._updates.b[t][j], self._updates.scale)  # [n, S, d_out]
            return output.index_add(0, rows, delta.to(output.dtype))

        return hook
