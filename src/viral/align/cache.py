"""Teacher features computed once to disk and read back during training (`align.teacher_cache: DIR`).

Layout of a cache folder:
- `manifest.json`: what the features depend on - teacher id, family, source, layer/adapter, weights hash
  (`weights_sha256`, see `teachers_base.weights_sha256`), teacher input size and grid, the student grid
  the features are already resampled to, z_dim, the stored dtype (float16), the image aspect handling and
  pad colour the student uses;
- `shard-NNNNNN.safetensors`: float16 tensors `[N_student, z_dim]`, one per image, keyed by the image path
  as written in the data file (relative to the image folder); each shard's metadata repeats the weights hash.

`build_teacher_cache` (the `viral cache-teacher` command) runs the teacher once over the training images and
is resumable: shards are written atomically, and a re-run computes only the images no shard holds yet.
Training with a cache checks the manifest against the configured teacher and student before the first step
(a mismatch names each differing field) and that every training image has an entry (a missing one is named).
"""

from __future__ import annotations

import gc
import json
import os
import struct
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from viral.config import ConfigError

MANIFEST_NAME = "manifest.json"
SHARD_PREFIX = "shard-"
FORMAT_VERSION = 1
STORED_DTYPE = torch.float16
# manifest fields that must equal the configured teacher's for the features to be valid targets
CHECKED_FIELDS = ("family", "source", "layer", "adapter", "weights_sha256", "input_size", "teacher_grid", "grid",
                  "z_dim", "dtype", "image_aspect", "pad_colour")


class TeacherCacheError(ConfigError):
    """A teacher cache does not match the run, or lacks an entry; the message says which."""


def cache_identity(teacher, image_aspect: str, pad_colour) -> dict[str, Any]:
    """The manifest fields of features computed by `teacher` for a student with this aspect handling."""
    identity = {"format": FORMAT_VERSION, **teacher.describe(), "dtype": str(STORED_DTYPE).removeprefix("torch."),
                "image_aspect": image_aspect, "pad_colour": list(pad_colour)}
    identity.setdefault("layer", None)
    identity.setdefault("adapter", None)
    return json.loads(json.dumps(identity))  # tuples -> lists, as read back from disk


def shard_keys(path: Path) -> tuple[list[str], dict[str, str]]:
    """Tensor names and metadata of a safetensors file, from its header alone."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    metadata = header.pop("__metadata__", {}) or {}
    return list(header), metadata


class TeacherCache:
    """Read access to a cache folder: manifest checks, the image -> shard index, features of one image."""

    def __init__(self, root: str | os.PathLike, max_open_shards: int = 32):
        self.root = Path(root)
        manifest_path = self.root / MANIFEST_NAME
        if not manifest_path.is_file():
            raise TeacherCacheError(f"{self.root} is not a teacher cache (no {MANIFEST_NAME}); build it with "
                                    f"`viral cache-teacher CONFIG.yaml --out {self.root}`")
        self.manifest = json.loads(manifest_path.read_text())
        self.z_dim = int(self.manifest["z_dim"])
        self.spec = self.manifest.get("teacher")
        self.max_open_shards = max_open_shards
        self._handles: OrderedDict[str, Any] = OrderedDict()
        self._pid = os.getpid()
        self.index = self._build_index()

    def _build_index(self) -> dict[str, str]:
        index: dict[str, str] = {}
        for path in sorted(self.root.glob(f"{SHARD_PREFIX}*.safetensors")):
            keys, metadata = shard_keys(path)
            if metadata.get("weights_sha256") != self.manifest["weights_sha256"]:
                raise TeacherCacheError(f"{path} was written by another teacher (weights hash "
                                        f"{metadata.get('weights_sha256')}, manifest {self.manifest['weights_sha256']});"
                                        f" remove it or rebuild the cache")
            for key in keys:
                index[key] = path.name
        return index

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def check(self, expected: dict[str, Any]) -> None:
        """Raise naming every field where the manifest differs from the configured teacher and student."""
        differences = [f"{field}: cache has {self.manifest.get(field)!r}, the run needs {expected.get(field)!r}"
                       for field in CHECKED_FIELDS if self.manifest.get(field) != expected.get(field)]
        if differences:
            raise TeacherCacheError(
                f"teacher cache {self.root} (built for teacher {self.manifest.get('teacher')!r}) does not match "
                f"this run (teacher {expected.get('teacher')!r}): " + "; ".join(differences)
                + ". Rebuild it with `viral cache-teacher` into another folder, or fix the config.")

    def check_covers(self, keys) -> None:
        """Raise naming the images (as written in the data file) that have no cached features."""
        missing = sorted({key for key in keys if key not in self.index})
        if missing:
            shown = ", ".join(repr(key) for key in missing[:5]) + (f" and {len(missing) - 5} more"
                                                                   if len(missing) > 5 else "")
            raise TeacherCacheError(f"teacher cache {self.root} has no features for {len(missing)} training "
                                    f"image(s): {shown}. Re-run `viral cache-teacher` with the same config and "
                                    f"--out {self.root}; it computes only what is missing.")

    def _shard(self, name: str):
        if self._pid != os.getpid():  # a forked data-loader worker: open its own handles
            self._handles, self._pid = OrderedDict(), os.getpid()
        handle = self._handles.get(name)
        if handle is None:
            handle = safe_open(str(self.root / name), framework="pt")
            self._handles[name] = handle
            if len(self._handles) > self.max_open_shards:
                self._handles.popitem(last=False)
        else:
            self._handles.move_to_end(name)
        return handle

    def features(self, key: str) -> torch.Tensor:
        """`[N_student, z_dim]` float16 features of the image at `key` (its path in the data file)."""
        name = self.index.get(key)
        if name is None:
            raise TeacherCacheError(f"teacher cache {self.root} has no features for image {key!r}; re-run "
                                    f"`viral cache-teacher` with --out {self.root} to fill it")
        return self._shard(name).get_tensor(key)


def open_cache(root: str | os.PathLike, identity: dict[str, Any]) -> TeacherCache:
    """A cache folder for writing: create its manifest, or check an existing one equals `identity`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        tmp = root / f".{MANIFEST_NAME}.tmp"
        tmp.write_text(json.dumps({**identity, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
        os.replace(tmp, manifest)
    for leftover in root.glob(f".{SHARD_PREFIX}*.tmp"):  # a shard being written when a run was killed
        leftover.unlink()
    cache = TeacherCache(root)
    cache.check(identity)
    return cache


def write_shard(root: Path, entries: dict[str, torch.Tensor], weights_hash: str) -> Path:
    """Write `entries` as the next shard, atomically (a killed run leaves at most a `.tmp` file)."""
    numbers = [int(p.stem[len(SHARD_PREFIX):]) for p in root.glob(f"{SHARD_PREFIX}*.safetensors")]
    path = root / f"{SHARD_PREFIX}{max(numbers, default=-1) + 1:06d}.safetensors"
    tmp = root / f".{path.name}.tmp"
    tensors = {key: value.detach().to("cpu", STORED_DTYPE).contiguous() for key, value in entries.items()}
    save_file(tensors, str(tmp), metadata={"format": "pt", "weights_sha256": weights_hash})
    os.replace(tmp, path)
    return path


def student_image_setup(config) -> tuple[Any, tuple[int, int]]:
    """The student's image processor (its mean colour pads images) and image-token grid, without loading
    a large model's weights (the tiny preset is built, as training would)."""
    from transformers import AutoConfig, AutoImageProcessor

    from viral.model import build_model, image_grid

    model = config.model
    if model.preset == "tiny":
        llava, processor = build_model(model, config.output_dir, data_path=config.data.path)
        return processor.image_processor, image_grid(llava)
    source = model.model_path if model.preset == "llava" else model.vision_tower
    vision = AutoConfig.from_pretrained(source)
    vision = getattr(vision, "vision_config", None) or vision
    side = int(vision.image_size) // int(vision.patch_size)
    return AutoImageProcessor.from_pretrained(source), (side, side)


def training_image_paths(config) -> list[str]:
    """The image paths (as written in the data file) of the records training would use, deduplicated."""
    from viral.data.llava import DataError, read_records, to_messages

    paths = set()
    for index, record in enumerate(read_records(config.data.path)):
        try:
            to_messages(record, config.data.path, index)
        except DataError:
            if not config.data.skip_bad_records:
                raise
            continue
        if record.get("image") is not None:
            paths.add(record["image"])
    return sorted(paths)


class _ImageInputs(torch.utils.data.Dataset):
    """Teacher inputs of one image per item, prepared as the training dataset prepares them."""

    def __init__(self, keys, folder, teacher, aspect, image_processor, data_path, skip_bad):
        self.keys, self.folder, self.teacher = keys, Path(folder), teacher
        self.aspect, self.image_processor, self.data_path, self.skip_bad = aspect, image_processor, data_path, skip_bad

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        from viral.data.images import ImageLoadError, apply_aspect, load_image
        from viral.data.llava import DataError

        key = self.keys[i]
        try:
            image = load_image(self.folder / key)
        except ImageLoadError as err:
            if self.skip_bad:
                return {"key": key, "bad": str(err)}
            raise DataError(self.data_path, None, "image", str(err)) from err
        image = apply_aspect(image, self.aspect, self.image_processor)
        return {"key": key, **{k: v[0] for k, v in self.teacher.inputs([image]).items()}}


def _collate(items):
    good = [item for item in items if "bad" not in item]
    batch = {"keys": [item["key"] for item in good], "bad": [item for item in items if "bad" in item]}
    for name in (good[0].keys() if good else ()):
        if name != "key":
            batch[name] = torch.stack([item[name] for item in good])
    return batch


def build_teacher_cache(config, out: str | os.PathLike, batch_size: int = 16, shard_size: int = 256,
                        device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the configured teacher once over the training images and store its features in `out`.

    Resumable: images already in a shard are skipped. Returns counts and the throughput in images/s.
    """
    from tqdm.auto import tqdm

    from viral.align.teachers import build_teacher
    from viral.data.images import mean_colour

    if not config.align.vra_target or not config.data.path:
        raise ConfigError("cache-teacher needs align.vra_target and data.path")
    image_processor, grid = student_image_setup(config)
    teacher = build_teacher(config.align.vra_target, grid)
    if not teacher.needs_pixels:
        raise ConfigError(f"align.vra_target {config.align.vra_target!r} is the student's own encoder; its "
                          f"features come from the training forward pass and are not cached")
    identity = cache_identity(teacher, config.data.image_aspect, mean_colour(image_processor))
    cache = open_cache(out, identity)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher.to(device=device, dtype=torch.bfloat16 if config.train.bf16 else torch.float32)
    keys = training_image_paths(config)
    todo = [key for key in keys if key not in cache]
    folder = config.data.image_folder or Path(config.data.path).parent
    dataset = _ImageInputs(todo, folder, teacher, config.data.image_aspect, image_processor, config.data.path,
                           config.data.skip_bad_records)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=_collate,
                                         num_workers=config.train.dataloader_num_workers)
    pending: dict[str, torch.Tensor] = {}
    computed, bad, shards = 0, [], 0
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", desc="cache-teacher", disable=not progress, dynamic_ncols=True)
    for batch in loader:
        bad += batch["bad"]
        if batch["keys"]:
            inputs = {name.removeprefix("teacher_"): value for name, value in batch.items()
                      if name.startswith("teacher_")}
            features = teacher(**inputs)  # [B, N_student, z_dim]
            for key, value in zip(batch["keys"], features):
                pending[key] = value
            computed += len(batch["keys"])
        bar.update(len(batch["keys"]) + len(batch["bad"]))
        while len(pending) >= shard_size:  # shards of exactly shard_size images, the last one the rest
            keys_now = list(pending)[:shard_size]
            write_shard(cache.root, {key: pending.pop(key) for key in keys_now}, identity["weights_sha256"])
            shards += 1
    if pending:
        write_shard(cache.root, pending, identity["weights_sha256"])
        shards += 1
    bar.close()
    seconds = time.perf_counter() - start
    del teacher
    gc.collect()
    return {"out": str(cache.root), "images": len(keys), "already_cached": len(keys) - len(todo),
            "computed": computed, "skipped_bad": len(bad), "shards_written": shards, "seconds": seconds,
            "images_per_second": computed / seconds if seconds > 0 else 0.0}


def open_training_cache(config, grid: tuple[int, int], image_processor) -> TeacherCache:
    """The cache `align.teacher_cache` names, checked against the configured teacher and student.

    The teacher is loaded once (on the CPU, in float32) to take its weights hash, input size and grid,
    then released: training with a cache holds no teacher."""
    from viral.align.teachers import build_teacher, resolve_teacher_spec
    from viral.data.images import mean_colour

    if resolve_teacher_spec(config.align.vra_target)[0] == "encoder":
        raise ConfigError(f"align.teacher_cache is set but align.vra_target is {config.align.vra_target!r} (the "
                          f"student's own encoder, computed in the forward pass); unset teacher_cache")
    cache = TeacherCache(config.align.teacher_cache)
    probe = build_teacher(config.align.vra_target, grid)
    expected = cache_identity(probe, config.data.image_aspect, mean_colour(image_processor))
    del probe
    gc.collect()
    cache.check(expected)
    return cache
