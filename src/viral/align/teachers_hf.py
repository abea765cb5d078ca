"""Teachers that are transformers models: DINOv2, CLIP, SigLIP, SigLIP 2, SAM's image encoder, Depth Anything's
DINOv2 backbone. Each loads by hub id or local folder through `from_pretrained`, keeps its own preprocessing,
and lands on the student's image-token grid.

- DINOv2 (with or without registers): patch tokens after the final layer norm; CLS and registers dropped.
- CLIP: patch tokens (CLS dropped) of a chosen layer, by default the last (`last_hidden_state`; CLIP's
  post-layernorm belongs to the pooled head).
- SigLIP: all tokens of a chosen layer, by default `last_hidden_state` (after the post-layernorm, before the
  attention-pooling head). SigLIP 2 NaFlex checkpoints (`siglip2`) take patchified pixels: the square image
  becomes `sqrt(max_num_patches)`^2 patches. Fixed-resolution SigLIP 2 checkpoints are `siglip` models.
- SAM: the image encoder's neck output (`[B, 256, 64, 64]` at 1024 px). The image is resized so its longest
  side is 1024 and padded bottom-right, as SAM's processor does; only the feature cells covering the image
  are resampled to the student grid.
- Depth Anything v2: its DINOv2 backbone's last layer, after the backbone's layer norm, CLS dropped.

`layer` (spec suffix `@L`, CLIP/SigLIP only) counts like transformers' `hidden_states`: 1..L are the outputs
of encoder layers 1..L, negative values count from the end (-1 = the last layer's raw output, -2 = LLaVA's
choice for its own encoder).
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from viral.align.teachers_base import (
    HFVisionTeacher,
    LayerOutput,
    Preprocessing,
    TeacherLoadError,
    load_frozen,
    read_processor_config,
    resample_region,
)


class Dinov2Teacher(HFVisionTeacher):
    """DINOv2 (with or without registers): patch tokens after the final layer norm; CLS and registers dropped."""

    family = "dinov2"

    def load_model(self, source: str):
        from transformers import AutoModel

        return load_frozen(AutoModel, source, self.spec)

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixel_values).last_hidden_state  # [B, 1 + R + h*w, D]
        registers = int(getattr(self.model.config, "num_register_tokens", 0) or 0)
        return hidden[:, 1 + registers:]


def encoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks of a CLIP/SigLIP vision model (flat in transformers 5, nested before)."""
    for owner in (model, getattr(model, "vision_model", None)):
        encoder = getattr(owner, "encoder", None)
        if encoder is not None and hasattr(encoder, "layers"):
            return encoder.layers
    raise TeacherLoadError(f"cannot find the encoder layers of {type(model).__name__}")


class ClipFamilyTeacher(HFVisionTeacher):
    """Shared by CLIP and SigLIP: the vision tower of a full or vision-only checkpoint, one chosen layer."""

    model_classes: dict[str, str] = {}
    prefix_tokens = 0  # CLS

    def load_model(self, source: str):
        import transformers
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(source).model_type
        if model_type not in self.model_classes:
            raise TeacherLoadError(f"teacher {self.spec!r}: {source} is a {model_type!r} model; the {self.family} "
                                   f"family loads {sorted(self.model_classes)}")
        model = load_frozen(getattr(transformers, self.model_classes[model_type]), source, self.spec)
        self._hooked = None
        if self.layer is not None:
            layers = encoder_layers(model)
            index = self.layer if self.layer > 0 else len(layers) + 1 + self.layer
            if not 1 <= index <= len(layers):
                raise TeacherLoadError(f"teacher {self.spec!r}: layer {self.layer} is out of range; the model has "
                                       f"{len(layers)} layers (1..{len(layers)} or -{len(layers)}..-1)")
            self._hooked = LayerOutput(layers[index - 1])
        return model

    def run(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """All tokens of the chosen layer, `[B, prefix + h*w, D]`."""
        interpolate = self.input_size != int(self.vision_config.image_size)
        out = self.model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate)
        return self._hooked.take() if self._hooked is not None else out.last_hidden_state

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.run(pixel_values)[:, self.prefix_tokens:]


class ClipTeacher(ClipFamilyTeacher):
    """CLIP vision tower: patch tokens (CLS dropped) of the chosen layer, default the last."""

    family = "clip"
    model_classes = {"clip": "CLIPVisionModel", "clip_vision_model": "CLIPVisionModel"}
    prefix_tokens = 1


class SiglipTeacher(ClipFamilyTeacher):
    """SigLIP (and fixed-resolution SigLIP 2) vision tower: no CLS; default `last_hidden_state`."""

    family = "siglip"
    model_classes = {"siglip": "SiglipVisionModel", "siglip_vision_model": "SiglipVisionModel",
                     "siglip2": "Siglip2VisionModel", "siglip2_vision_model": "Siglip2VisionModel"}

    @property
    def naflex(self) -> bool:
        """SigLIP 2 NaFlex models take patchified pixels with their spatial shapes."""
        return self.model.config.model_type.startswith("siglip2")

    def load_preprocessing(self, source: str) -> Preprocessing:
        data = read_processor_config(source)
        if self.naflex:
            # NaFlex: a square image becomes side x side patches within the processor's patch budget
            patch = int((data or {}).get("patch_size") or self.vision_config.patch_size)
            budget = int((data or {}).get("max_num_patches") or self.vision_config.num_patches)
            side = math.isqrt(budget) * patch
            return Preprocessing.from_processor(data, side, size=side)
        return super().load_preprocessing(source)

    def run(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.naflex:
            return super().run(pixel_values)
        patch = int(self.vision_config.patch_size)
        batch, channels, height, width = pixel_values.shape
        rows, cols = height // patch, width // patch
        # [B, 3, S, S] -> [B, rows*cols, patch*patch*3], channels last inside a patch (as Siglip2ImageProcessor)
        patches = pixel_values.reshape(batch, channels, rows, patch, cols, patch).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(batch, rows * cols, patch * patch * channels)
        mask = torch.ones(batch, rows * cols, dtype=torch.long, device=pixel_values.device)  # [B, N]
        shapes = torch.tensor([[rows, cols]] * batch, dtype=torch.long, device=pixel_values.device)  # [B, 2]
        out = self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
        return self._hooked.take() if self._hooked is not None else out.last_hidden_state


class SamTeacher(HFVisionTeacher):
    """SAM's image encoder (the neck output). Resize-longest + pad as SAM; only cells covering the image used."""

    family = "sam"

    def load_model(self, source: str):
        from transformers import AutoConfig, SamModel, SamVisionModel

        model_type = AutoConfig.from_pretrained(source).model_type
        if model_type == "sam":
            return load_frozen(SamModel, source, self.spec).vision_encoder
        if model_type == "sam_vision_model":
            return load_frozen(SamVisionModel, source, self.spec).vision_encoder
        raise TeacherLoadError(f"teacher {self.spec!r}: {source} is a {model_type!r} model, not SAM")

    def load_preprocessing(self, source: str) -> Preprocessing:
        data = read_processor_config(source) or {}
        size = (data.get("size") or {}).get("longest_edge") or int(self.vision_config.image_size)
        return Preprocessing.from_processor(data, size, size=int(size))

    def feature_grid(self) -> tuple[int, int]:
        side = int(self.vision_config.image_size) // int(self.vision_config.patch_size)
        return side, side

    @classmethod
    def config_feature_dim(cls, config) -> int:
        return int((getattr(config, "vision_config", None) or config).output_channels)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) after scaling the longest side to the input size, rounded as SAM's processor does."""
        scale = self.input_size / max(width, height)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def inputs(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Pixels `[B, 3, S, S]` (image top-left, zeros after normalisation elsewhere) and image sizes `[B, 2]`."""
        side = self.input_size
        pixels = torch.zeros(len(images), 3, side, side)  # [B, 3, S, S]
        sizes = torch.zeros(len(images), 2, dtype=torch.long)  # [B, 2] (height, width) inside the canvas
        resample = Image.Resampling(self.preprocessing.resample)
        for i, image in enumerate(images):
            height, width = self.resized_size(*image.size)
            resized = image.convert("RGB").resize((width, height), resample)
            pixels[i, :, :height, :width] = self.preprocessing.to_tensor([resized])[0]
            sizes[i] = torch.tensor([height, width])
        return {"teacher_pixel_values": pixels, "teacher_image_sizes": sizes}

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return self.inputs(images)["teacher_pixel_values"]

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None, **extra) -> torch.Tensor:
        maps = self.model(pixel_values=self._model_input(pixel_values)).last_hidden_state  # [B, C, h, w]
        if image_sizes is None:  # no size given: the whole canvas is image
            extent = torch.ones(maps.shape[0], 2)
        else:
            extent = image_sizes.float() / float(self.input_size)  # [B, 2] fraction of the canvas
        return resample_region(maps, extent, self.student_grid)  # [B, N_student, C]


class DepthAnythingTeacher(HFVisionTeacher):
    """Depth Anything v2: the DINOv2 backbone's last layer (after its layer norm), CLS and registers dropped."""

    family = "depth-anything"

    def load_model(self, source: str):
        from transformers import AutoConfig, DepthAnythingForDepthEstimation

        model_type = AutoConfig.from_pretrained(source).model_type
        if model_type != "depth_anything":
            raise TeacherLoadError(f"teacher {self.spec!r}: {source} is a {model_type!r} model, not Depth Anything")
        return load_frozen(DepthAnythingForDepthEstimation, source, self.spec).backbone

    @classmethod
    def config_feature_dim(cls, config) -> int:
        return int((getattr(config, "backbone_config", None) or config).hidden_size)

    def patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        hidden = out.hidden_states[-1]  # [B, 1 + R + h*w, D]: the last backbone layer
        if getattr(self.vision_config, "apply_layernorm", True):
            hidden = self.model.layernorm(hidden)
        registers = int(getattr(self.vision_config, "num_register_tokens", 0) or 0)
        return hidden[:, 1 + registers:]
