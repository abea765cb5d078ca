"""Image-token states of a LlavaForConditionalGeneration, read with forward hooks in one forward pass.

Layer numbering is the one of `viral.align.capture` (and of VIRAL's `target_layers`): 0 is the LLM's
input embeddings (the projector output at the image positions), ℓ in 1..L-1 the output of decoder layer
ℓ, L the last layer's output after the final norm. Only the chosen layers are kept, and only at image
positions (`input_ids == image_token_id`), never all hidden states.
"""

from __future__ import annotations

import torch
from torch import nn

from viral.align import capture_layers, language_model_parts
from viral.model import image_grid


def decoder_layers(model) -> nn.ModuleList:
    """The LLM's decoder layers of a LlavaForConditionalGeneration."""
    return language_model_parts(model)[0]


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


@torch.no_grad()
def image_states(model, inputs: dict, layers) -> dict:
    """One forward pass; {layer: [B, N, D]} for each requested layer and "encoder": [B, N, D_z], the
    vision features z entering the projector (CLS already dropped by the model). float32, on CPU."""
    mask = image_token_mask(model, inputs["input_ids"])
    encoder = {}

    def projector_input(module, args):
        encoder["z"] = args[0]  # [num_images, N, D_z]

    handle = model.model.multi_modal_projector.register_forward_pre_hook(projector_input)
    try:
        with capture_layers(model, sorted(set(int(layer) for layer in layers)), mask) as capture:
            model(**inputs, logits_to_keep=1)
    finally:
        handle.remove()
    states = {layer: value.detach().float().cpu() for layer, value in capture.states.items()}
    states["encoder"] = encoder["z"].detach().float().cpu()
    return states
