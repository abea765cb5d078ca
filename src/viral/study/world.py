"""A ShapesWorld folder as arrays: images, dense label maps and the objects read back from the label maps.

Objects are recovered from the label maps (connected regions of one shape and colour id; ShapesWorld
never lets two objects touch), so anything that writes the same layout works, whatever drew it.
Images and label maps come from the split's `arrays-{split}.npz` when its names match the PNGs, else from the PNGs.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from viral.data.shapes import ARRAYS, scene_words


@dataclass
class WorldObject:
    """One object in an image: shape id (1..), colour id (1..), centre in pixels."""

    shape: int
    colour: int
    cx: float
    cy: float


@dataclass
class WorldSplit:
    """The images of one split: `images` [n, S, S, 3] uint8, `labels` [n, S, S, 2] uint8 (shape, colour)."""

    names: list[str]
    images: np.ndarray
    labels: np.ndarray
    objects: list[list[WorldObject]]

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.names)


def objects_from_labels(labels: np.ndarray) -> list[WorldObject]:
    """The objects of one `[S, S, 2]` label map (shape id, colour id), ordered by position."""
    objects = []
    shape_ids, colour_ids = labels[..., 0], labels[..., 1]
    for shape in np.unique(shape_ids):
        if shape == 0:
            continue
        for colour in np.unique(colour_ids[shape_ids == shape]):
            regions, count = ndimage.label((shape_ids == shape) & (colour_ids == colour))
            for region in range(1, count + 1):
                ys, xs = np.nonzero(regions == region)
                if len(xs) < 4:  # an anti-aliasing speck, not an object
                    continue
                objects.append(WorldObject(int(shape), int(colour), float(xs.mean()), float(ys.mean())))
    return sorted(objects, key=lambda o: (o.cy, o.cx))


def load_split(data_dir: str | Path, split: str, limit: int | None = None) -> WorldSplit:
    """Images, label maps and objects of `split` ("train" or "eval") in a ShapesWorld folder."""
    data_dir = Path(data_dir)
    every = sorted(p.name for p in (data_dir / "images").glob(f"{split}_*.png"))
    names = every if limit is None else every[:limit]
    arrays = _split_arrays(data_dir / ARRAYS.format(split=split), every, len(names))
    if not names:
        raise FileNotFoundError(f"{data_dir}/images holds no {split}_*.png (write a world with `viral shapes generate`)")
    if arrays is not None:
        images, labels = arrays
        return WorldSplit(names, images, labels, [objects_from_labels(label) for label in labels])
    images, labels, objects = [], [], []
    for name in names:
        label_file = data_dir / "labels" / name
        if not label_file.is_file():
            raise FileNotFoundError(f"label map {label_file} is missing (ShapesWorld writes one per image)")
        images.append(np.asarray(Image.open(data_dir / "images" / name).convert("RGB")))
        label = np.asarray(Image.open(label_file).convert("RGB"))[..., :2]
        labels.append(label)
        objects.append(objects_from_labels(label))
    return WorldSplit(names, np.stack(images), np.stack(labels), objects)


def split_scenes(data_dir: str | Path, split: str, grid: int, row_end: str | None = None,
                 cell_names: bool = False) -> dict[str, str]:
    """Image file name -> its scene as words (`scene_words` on a `grid` x `grid` raster) for every image of `split`."""
    world = load_split(data_dir, split)
    return {name: scene_words(labels, grid, row_end=row_end, cell_names=cell_names)
            for name, labels in zip(world.names, world.labels)}


def _split_arrays(path: Path, names: list[str], rows: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The first `rows` images and label maps of the split's archive, if it holds exactly the PNGs `names`
    (else None: a stale or unreadable archive leaves the PNGs to be read)."""
    if not names or not path.is_file():
        return None
    try:
        with np.load(path) as archive:
            if archive["names"].tolist() != names:  # the PNGs were rewritten or added to
                return None
            images, labels = archive["images"], archive["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if images.dtype != np.uint8 or labels.dtype != np.uint8 or len(images) != len(names) or len(labels) != len(names):
        return None
    if rows < len(names):  # a copy, so that the rest of the archive's arrays is freed
        return images[:rows].copy(), labels[:rows].copy()
    return images, labels
