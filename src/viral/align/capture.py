"""Forward hooks that keep only the chosen LLM layers' image-token states (never all hidden states).

Layer numbering follows VIRAL's `target_layers` and transformers' `hidden_states` tuple: 0 is the
LLM's input embeddings (after the image features are merged in), l in 1..L-1 is the output of decoder
layer l, and L is the last layer's output after the final norm (transformers' last `hidden_states`).
One image-token mask (`input_ids == image_token_id`) selects the states, the same mask that places
the image features in the sequence. With `ragged=True` (families whose images have different numbers of
tokens, e.g. Qwen2-VL) the states of all samples are kept packed, `[sum N_i, D]` in sequence order.
"""

from __future__ import annotations

import torch
from torch import nn


def language_model_parts(llava) -> tuple[nn.ModuleList, nn.Module]:
    """The decoder layer list and final norm of a LlavaForConditionalGeneration (or its peft wrapper)."""
    base = llava.get_base_model() if hasattr(llava, "get_base_model") else llava
    language_model = base.model.language_model
    return language_model.layers, language_model.norm


class LayerCapture:
    """Captures `[B_img, N, D]` (ragged: `[sum N_i, D]`) image-token states at `layers` while armed."""

    def __init__(self, llava, layers: list[int], ragged: bool = False):
        decoder_layers, norm = language_model_parts(llava)
        self.ragged = ragged
        self.num_layers = len(decoder_layers)
        self.layers = [int(layer) for layer in layers]
        for layer in self.layers:
            if not 0 <= layer <= self.num_layers:
                raise ValueError(f"target layer {layer} is out of range 0..{self.num_layers} for this LLM")
        self.mask: torch.Tensor | None = None
        self.states: dict[int, torch.Tensor] = {}
        self.handles = []
        for layer in self.layers:
            if layer == 0:
                handle = decoder_layers[0].register_forward_pre_hook(self._pre_hook(layer), with_kwargs=True)
            elif layer < self.num_layers:
                handle = decoder_layers[layer - 1].register_forward_hook(self._hook(layer))
            else:
                handle = norm.register_forward_hook(self._hook(layer))
            self.handles.append(handle)

    def _keep(self, layer: int, hidden: torch.Tensor) -> None:
        if self.mask is None or layer in self.states:
            return
        mask = self.mask.to(hidden.device)  # [B, T]
        if self.ragged:
            self.states[layer] = hidden[mask]  # [sum N_i, D]
            return
        rows = mask.any(dim=1)
        counts = mask.sum(dim=1)[rows]
        if counts.numel() and bool((counts != counts[0]).any()):
            raise ValueError(f"image samples hold different numbers of image tokens: {counts.tolist()}")
        n = int(counts[0]) if counts.numel() else 0
        self.states[layer] = hidden[mask].view(int(rows.sum()), n, hidden.shape[-1])  # [B_img, N, D]

    def _hook(self, layer: int):
        def hook(module, args, output):
            hidden = output if torch.is_tensor(output) else output[0]
            self._keep(layer, hidden)
        return hook

    def _pre_hook(self, layer: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self._keep(layer, hidden)
        return hook

    def arm(self, image_mask: torch.Tensor) -> None:
        """Capture during the next forward, selecting positions where `image_mask` `[B, T]` is true."""
        self.mask = image_mask
        self.states = {}

    def collect(self) -> dict[int, torch.Tensor]:
        """The captured states `{layer: [B_img, N, D]}`; disarms (so recomputation in backward keeps nothing)."""
        states, self.states, self.mask = self.states, {}, None
        return states

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class capture_layers:
    """Context manager: `with capture_layers(model, [8], mask) as cap: model(...)`, then `cap.states`."""

    def __init__(self, llava, layers: list[int], image_mask: torch.Tensor):
        self.capture = LayerCapture(llava, layers)
        self.capture.arm(image_mask)
        self.states: dict[int, torch.Tensor] = {}

    def __enter__(self) -> "capture_layers":
        return self

    def __exit__(self, *exc) -> None:
        self.states = self.capture.collect()
        self.capture.remove()
