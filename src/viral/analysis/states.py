"""Image-token states of a LlavaForConditionalGeneration, read with forward hooks in one forward pass.

Layer numbering follows DESIGN.md: 0 is the LLM's input embeddings (the projector output at the
image positions), ℓ >= 1 is the output of decoder layer ℓ (before the final norm). Only the chosen
layers are kept, and only at image positions (`input_ids == image_token_id`), never all hidden states.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from viral.model import image_grid


def decoder_layers(model) -> nn.ModuleList:
    """The LLM's decoder layers of a LlavaForConditionalGeneration."""
    language_model = model.model.language_model
    layers = getattr(language_model, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    for module in language_model.modules():
        if isinstance(getattr(module, "layers", None), nn.ModuleList):
            return module.layers
    raise ValueError(f"cannot find the decoder layers of {type(language_model).__name__}")


def num_llm_layers(model) -> int:
    return len(decoder_layers(model))


def image_token_mask(model, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] bool of image positions; every sample must hold the same number of image tokens."""
    mask = input_ids == model.config.image_token_id  # [B, T]
    counts = mask.sum(dim=1)
    if counts.numel() and (counts.min() == 0 or (counts != counts[0]).any()):
        raise ValueError(
            f"every sample needs exactly one image for this analysis; image tokens per sample: {counts.tolist()}"
        )
    return mask


def to_grid(model, tokens: torch.Tensor) -> torch.Tensor:
    """[..., N, C] image-token values → [..., rows, cols, C] on the vision tower's patch grid."""
    rows, cols = image_grid(model)
    n = tokens.shape[-2]
    if n == rows * cols + 1:  # vision_feature_select_strategy "full" keeps CLS first
        tokens = tokens[..., 1:, :]
    elif n != rows * cols:
        raise ValueError(f"{n} image tokens do not fill the {rows}x{cols} patch grid")
    return tokens.reshape(*tokens.shape[:-2], rows, cols, tokens.shape[-1])


def _hidden(output):
    return output[0] if isinstance(output, (tuple, list)) else output


@contextmanager
def capture_image_states(model, layers, mask: torch.Tensor):
    """Hooks recording image-token states of `layers` for the next forward pass.

    Yields a dict filled as the forward runs: {layer: [B, N, D]} plus "encoder": [B, N, D_z], the
    vision features z entering the projector (CLS already dropped by the model).
    """
    blocks = decoder_layers(model)
    wanted = sorted(set(int(layer) for layer in layers))
    if wanted and not 0 <= wanted[0] <= wanted[-1] <= len(blocks):
        raise ValueError(f"layers {wanted} out of range 0..{len(blocks)}")
    batch = mask.shape[0]
    store: dict = {}

    def gather(hidden: torch.Tensor) -> torch.Tensor:
        return hidden[mask.to(hidden.device)].reshape(batch, -1, hidden.shape[-1]).detach().float().cpu()

    handles = []
    try:
        if 0 in wanted:

            def before_first(module, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                store[0] = gather(hidden)

            handles.append(blocks[0].register_forward_pre_hook(before_first, with_kwargs=True))
        for layer in wanted:
            if layer == 0:
                continue

            def after(module, args, output, layer=layer):
                store[layer] = gather(_hidden(output))

            handles.append(blocks[layer - 1].register_forward_hook(after))

        def projector_input(module, args):
            store["encoder"] = args[0].detach().float().cpu()  # [num_images, N, D_z]

        handles.append(model.model.multi_modal_projector.register_forward_pre_hook(projector_input))
        yield store
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def image_states(model, inputs: dict, layers) -> dict:
    """One forward pass; {layer: [B, N, D]} for each requested layer and "encoder": [B, N, D_z]."""
    mask = image_token_mask(model, inputs["input_ids"])
    with capture_image_states(model, layers, mask) as store:
        model(**inputs, logits_to_keep=1)
    return dict(store)
