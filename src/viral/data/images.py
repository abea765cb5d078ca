"""Image loading and LLaVA-1.5 aspect handling shared by training, inference and evaluation."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from viral.errors import UserError


class ImageLoadError(UserError, OSError):
    """An image file is missing or cannot be decoded."""


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, fully decoded (so truncated files fail here, not later)."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"image file {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageLoadError(f"image file {path} cannot be read: {err}") from err


def mean_colour(image_processor) -> tuple[int, int, int]:
    """The processor's normalisation mean as an RGB colour (LLaVA-1.5 pads with it)."""
    mean = getattr(image_processor, "image_mean", None) or [0.5, 0.5, 0.5]
    return tuple(int(round(float(m) * 255)) for m in mean[:3])


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad the shorter side so the image is square, content centred (LLaVA-1.5 `pad`)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


MAX_SIDE = 1024  # larger images are shrunk first: every encoder here reads at most 1024 px (SAM)


def apply_aspect(image: Image.Image, aspect: str, image_processor) -> Image.Image:
    """`pad`: pad to square with the processor's mean colour; `square`: leave it to the processor's resize.

    An image whose longer side exceeds MAX_SIDE is shrunk (aspect kept) before padding, so a
    10000x10 strip costs a 1024x1024 canvas, not a 10000x10000 one.
    """
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BICUBIC)
    if aspect == "pad":
        return expand_to_square(image, mean_colour(image_processor))
    if aspect == "square":
        return image
    raise ValueError(f"unknown image aspect {aspect!r}; choose pad or square")
