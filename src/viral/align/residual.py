"""Residual baselines of the VIRAL paper's pilot study (Sec. 4.2, eqs. 3-4): re-inject the visual
features into the image-token states after LLM layer ℓ, instead of aligning them.

    post_projection:  e_img_ℓ ← e_img_ℓ + P(z)      (P: the MLLM's own projector; no new parameters)
    pre_projection:   e_img_ℓ ← e_img_ℓ + A(z)      (A: a learned linear adapter D_z → D of the raw z)

Implemented with forward hooks, active in training and inference: a pre-hook on the model reads the
image-token mask from `input_ids`, hooks on the projector keep z (its input) and P(z) (its output),
and a hook on decoder layer ℓ adds the chosen term at the image positions only. Decoding steps after
the prompt hold no image tokens and are left unchanged. The adapter is saved beside the checkpoint
(`residual.safetensors` + `residual.json`); `load_residual` re-attaches it to a loaded model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from viral.align.capture import language_model_parts

RESIDUAL_MODES = ("post_projection", "pre_projection")
RESIDUAL_CONFIG = "residual.json"
RESIDUAL_WEIGHTS = "residual.safetensors"


def _base(model):
    """The LlavaForConditionalGeneration inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class ImageResidual(nn.Module):
    """The residual term added at image positions after decoder layer `layer` (1-based) of `model`."""

    def __init__(self, model, mode: str, layer: int):
        super().__init__()
        if mode not in RESIDUAL_MODES:
            raise ValueError(f"residual mode {mode!r} is unknown; choose one of {', '.join(RESIDUAL_MODES)}")
        model = _base(model)
        blocks = language_model_parts(model)[0]
        if not 1 <= int(layer) <= len(blocks):
            raise ValueError(f"residual layer {layer} is out of range 1..{len(blocks)} (output of decoder layer ℓ)")
        self.mode = mode
        self.layer = int(layer)
        projector = model.model.multi_modal_projector
        if mode == "pre_projection":
            z_dim = projector.linear_1.in_features
            hidden = model.config.text_config.hidden_size
            reference = projector.linear_1.weight
            self.adapter = nn.Linear(z_dim, hidden).to(device=reference.device, dtype=reference.dtype)
        self._mask: torch.Tensor | None = None
        self._term: torch.Tensor | None = None
        self._handles = [
            model.register_forward_pre_hook(self._read_mask, with_kwargs=True),
            projector.register_forward_hook(self._read_features),
            blocks[self.layer - 1].register_forward_hook(self._add),
        ]

    def _read_mask(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ValueError("the residual baseline needs input_ids to find image positions (got inputs_embeds)")
        self._mask = input_ids == module.config.image_token_id  # [B, T]
        self._term = None

    def _read_features(self, module, args, output):
        # args[0]: z [num_images, N, D_z]; output: P(z) [num_images, N, D]
        self._term = output if self.mode == "post_projection" else self.adapter(args[0])

    def _add(self, module, args, output):
        hidden = output[0] if isinstance(output, (tuple, list)) else output  # [B, T, D]
        mask = self._mask
        if mask is None or self._term is None or mask.shape != hidden.shape[:2] or not mask.any():
            return None  # a decoding step (no image tokens) or a text-only batch
        term = self._term.reshape(-1, hidden.shape[-1]).to(hidden.dtype)  # [num_images * N, D]
        added = hidden.masked_scatter(mask[..., None], hidden[mask] + term)
        if isinstance(output, (tuple, list)):
            return (added, *output[1:])
        return added

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RESIDUAL_CONFIG).write_text(json.dumps({"mode": self.mode, "layer": self.layer}) + "\n")
        if self.mode == "pre_projection":
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in self.adapter.state_dict().items()},
                      str(folder / RESIDUAL_WEIGHTS))


def attach_residual(model, mode: str, layer: int) -> ImageResidual:
    """Hook the residual baseline into `model`; train the returned module's parameters with the model's."""
    return ImageResidual(model, mode, layer)


def load_residual(model, folder: str | Path) -> ImageResidual | None:
    """Re-attach the residual saved beside a checkpoint; None when the folder holds none."""
    folder = Path(folder)
    config_file = folder / RESIDUAL_CONFIG
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
        residual = ImageResidual(model, config["mode"], config["layer"])
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{config_file}: expected {{\"mode\": ..., \"layer\": ...}} ({err})") from err
    if residual.mode == "pre_projection":
        from safetensors.torch import load_file

        weights = folder / RESIDUAL_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: the pre_projection adapter's weights are missing")
        residual.adapter.load_state_dict(load_file(str(weights)))
    return residual
