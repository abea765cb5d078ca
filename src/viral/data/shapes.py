"""ShapesWorld: a deterministic synthetic world of coloured shapes for training and ShapesBench.

`generate(out_dir, seed, n_train, n_eval)` draws images of circles, squares and triangles in a few
colours on varied backgrounds (flat colours, gradients, noise), and writes:

- `images/{split}_{i:06d}.png`                  the images;
- `labels/{split}_{i:06d}.png`                  the dense label map: red channel = shape id
                                               (0 background, 1 circle, 2 square, 3 triangle),
                                               green channel = colour id (0 background, 1.. in COLOURS order);
- `arrays-{split}.npz`                         the same split as one archive (`ARRAYS`): `names` (the PNG file
                                               names, sorted), `images` uint8 [n, S, S, 3] and `labels` uint8
                                               [n, S, S, 2] (red and green of the label maps), so loaders
                                               need not decode thousands of PNGs;
- `train.json`                                 LLaVA-format instruction records (multi-turn QA);
- `captions.json`                              LLaVA-format caption records for projector pre-training;
- `text.json`                                  the same training turns and captions without their images
                                               (`<image>` dropped): a corpus for the study's language stage
                                               (the study also writes `scene-text-{grid}.json`, the image
                                               replaced by its scene as words: `write_text_corpus`);
- `eval.jsonl`                                 ShapesBench: one question per type per evaluation image,
                                               `{question_id, image, question, answer, type}`;
- `meta.json`                                  the world's vocabulary, image size and seed.

Every image is drawn from its own random stream `(seed, split, index)`, so any subset regenerates
identically. Question types: count ("How many objects are there?"), relation ("Is the red object left or
right of the blue object?" -> "left"; also "above or below"; about two objects that do not overlap along the
asked axis, or with `relation_pairs="across"` only two on either side of the image's midline), existence
("Is there a circle?", as POPE), colour ("What colour is the triangle?"), position ("Is the red object in
the left or the right half?" -> "left"; also "top or bottom").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from viral.data.templates import IMAGE_TOKEN

SHAPES = ["circle", "square", "triangle"]
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
}
QUESTION_TYPES = ["count", "relation", "existence", "colour", "position"]  # every type ShapesWorld can ask
DEFAULT_TYPES = ["count", "relation", "existence", "colour"]  # what a world asks unless told otherwise
INSTRUCTIONS = {
    "count": "Answer with a number.",
    "relation": "Answer with one word.",
    "existence": "Answer yes or no.",
    "colour": "Answer with one word.",
    "position": "Answer with one word.",
}
MAX_OBJECTS = 6
ARRAYS = "arrays-{split}.npz"  # a split's names, images and label maps as one numpy archive (format string)


@dataclass
class ShapeObject:
    """One drawn object: its kind, colour, centre and half-size in pixels."""

    shape: str
    colour: str
    cx: float
    cy: float
    half: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A flat, gradient or noisy background in muted colours, `[size, size, 3]` uint8."""
    base = rng.integers(60, 200, size=3).astype(np.float32)
    kind = rng.integers(0, 3)
    if kind == 0:
        image = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == 1:
        other = rng.integers(60, 200, size=3).astype(np.float32)
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)
        ramp = t[None, :, None] if rng.random() < 0.5 else t[:, None, None]
        image = base * (1 - ramp) + other * ramp
        image = np.broadcast_to(image, (size, size, 3)).copy()
    else:
        image = np.broadcast_to(base, (size, size, 3)).copy()
    noise = rng.normal(0.0, rng.uniform(4.0, 18.0), size=(size, size, 3))
    image = image + noise
    # muted: pull towards grey so the shape colours stand out
    grey = image.mean(axis=2, keepdims=True)
    image = 0.5 * image + 0.5 * grey
    return np.clip(image, 0, 255).astype(np.uint8)


def _place_objects(rng: np.random.Generator, size: int, max_objects: int = MAX_OBJECTS) -> list[ShapeObject]:
    count = int(rng.integers(1, max_objects + 1))
    objects: list[ShapeObject] = []
    attempts = 0
    while len(objects) < count and attempts < 200:
        attempts += 1
        # 16-27 px wide at 96 px: two to five 12-px patches across, so the tiny encoders can tell the shapes apart
        half = float(rng.uniform(size * 0.085, size * 0.14))
        cx = float(rng.uniform(half + 1, size - half - 1))
        cy = float(rng.uniform(half + 1, size - half - 1))
        if any(abs(cx - o.cx) < half + o.half + 2 and abs(cy - o.cy) < half + o.half + 2 for o in objects):
            continue
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        objects.append(ShapeObject(shape, colour, cx, cy, half))
    return objects


def _draw(objects: list[ShapeObject], background: np.ndarray) -> tuple[Image.Image, Image.Image]:
    """The RGB image and its label map (R = shape id, G = colour id)."""
    size = background.shape[0]
    image = Image.fromarray(background)
    labels = Image.new("RGB", (size, size), (0, 0, 0))
    draw, label_draw = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    colour_ids = {name: i + 1 for i, name in enumerate(COLOURS)}
    for obj in objects:
        box = [obj.cx - obj.half, obj.cy - obj.half, obj.cx + obj.half, obj.cy + obj.half]
        label = (SHAPES.index(obj.shape) + 1, colour_ids[obj.colour], 0)
        for canvas, fill in ((draw, COLOURS[obj.colour]), (label_draw, label)):
            if obj.shape == "circle":
                canvas.ellipse(box, fill=fill)
            elif obj.shape == "square":
                canvas.rectangle(box, fill=fill)
            else:
                x0, y0, x1, y1 = box
                canvas.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image, labels


def _count_question(rng, objects, size=None):
    # all objects: asking for a (colour, shape) pair made "0" the answer to half the questions, and
    # counting one shape stayed at chance for the tiny models of the study (see README: the study)
    return "How many objects are there?", str(len(objects))


RELATION_PAIRS = ["apart", "across"]  # which pairs of objects a relation question may ask about


def _clear_relation(a: ShapeObject, b: ShapeObject, ca: float, cb: float, size: int, pairs: str) -> bool:
    """Whether the relation between `a` and `b` along one axis (centres `ca`, `cb`) may be asked: "apart", the
    two objects do not overlap along it; "across", the image's midline runs between them, so each lies
    wholly in its own half and the relation is the position of either object against the frame."""
    if pairs == "apart":
        return abs(ca - cb) > a.half + b.half
    (low, first), (high, second) = sorted(((ca, a), (cb, b)), key=lambda centre_object: centre_object[0])
    return low + first.half < size / 2 < high - second.half


def _relation_question(rng, objects, size=None, pairs_kind="apart"):
    # objects are named by colour and the answer is the direction itself ("left", "above"), offered as
    # two options: with "Is the red circle left of the blue square? yes/no" relation stayed at chance
    # for the study's tiny models, which had to bind shape to colour, compare positions and then match
    # the comparison against the asked direction (an XOR) - What's Up asks for the direction the same way
    colours = [o.colour for o in objects]
    unique = [o for o in objects if colours.count(o.colour) == 1]
    pairs = []
    for a in unique:
        for b in unique:
            if a is b:
                continue
            if _clear_relation(a, b, a.cx, b.cx, size, pairs_kind):
                pairs.append((a, b, "left or right of", "left" if a.cx < b.cx else "right"))
            if _clear_relation(a, b, a.cy, b.cy, size, pairs_kind):
                pairs.append((a, b, "above or below", "above" if a.cy < b.cy else "below"))
    if not pairs:
        return None
    a, b, options, truth = pairs[int(rng.integers(len(pairs)))]
    return f"Is the {a.colour} object {options} the {b.colour} object?", truth


def _existence_question(rng, objects, size=None):
    # object existence as POPE asks it: one category (here a shape), yes or no. The colour-and-shape form
    # ("Is there a red circle?") stayed at chance in both arms of the study for 800 steps
    present = sorted({o.shape for o in objects})
    absent = [s for s in SHAPES if s not in present]
    if rng.random() < 0.5 or not absent:
        return f"Is there a {present[int(rng.integers(len(present)))]}?", "yes"
    return f"Is there a {absent[int(rng.integers(len(absent)))]}?", "no"


def _colour_question(rng, objects, size=None):
    single = [s for s in SHAPES if sum(o.shape == s for o in objects) == 1]
    if not single:
        return None
    shape = single[int(rng.integers(len(single)))]
    colour = next(o.colour for o in objects if o.shape == shape)
    return f"What colour is the {shape}?", colour


def _position_question(rng, objects, size):
    # one object, named by its unique colour, against the image frame: which half holds it; objects that
    # straddle the asked midline are never asked about
    colours = [o.colour for o in objects]
    clear = [(o, axis) for o in objects if colours.count(o.colour) == 1 for axis in ("x", "y")
             if abs((o.cx if axis == "x" else o.cy) - size / 2) > o.half]
    if not clear:
        return None
    o, axis = clear[int(rng.integers(len(clear)))]
    if axis == "x":
        return f"Is the {o.colour} object in the left or the right half?", "left" if o.cx < size / 2 else "right"
    return f"Is the {o.colour} object in the top or the bottom half?", "top" if o.cy < size / 2 else "bottom"


QUESTION_MAKERS = {
    "count": _count_question,
    "relation": _relation_question,
    "existence": _existence_question,
    "colour": _colour_question,
    "position": _position_question,
}


def caption(objects: list[ShapeObject]) -> str:
    """A plain listing of the objects, e.g. 'two red circles and one blue square.'"""
    numbers = ["zero", "one", "two", "three", "four", "five", "six"]
    counts: dict[str, int] = {}
    for o in objects:
        counts[o.name] = counts.get(o.name, 0) + 1
    parts = []
    for name in sorted(counts):
        colour, shape = name.split()
        n = counts[name]
        parts.append(f"{numbers[n]} {colour} {shape if n == 1 else PLURALS[shape]}")
    return (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."


def draw_scene(seed: int, split: str, index: int, size: int, max_objects: int = MAX_OBJECTS):
    """Objects, image and label map of one scene, from its own random stream."""
    split_id = {"train": 0, "eval": 1}[split]
    rng = np.random.default_rng([seed, split_id, index])
    objects = _place_objects(rng, size, max_objects)
    image, labels = _draw(objects, _background(rng, size))
    return rng, objects, image, labels


def _question(rng, objects, qtype, size, relation_pairs="apart"):
    options = {"pairs_kind": relation_pairs} if qtype == "relation" else {}
    made = QUESTION_MAKERS[qtype](rng, objects, size, **options)
    if made is None:
        return None
    question, answer = made
    return f"{question} {INSTRUCTIONS[qtype]}", answer


def _scene_records(out: Path, seed: int, split: str, indices: range, size: int, max_objects: int, turns: int,
                   types: list[str], weights: np.ndarray | None, relation_pairs: str = "apart",
                   fallback: bool = True, progress: bool = False, threads: int | None = None
                   ) -> tuple[dict[str, list[dict]], list[str], np.ndarray, np.ndarray]:
    """Draw and save the scenes `indices` of `split`: their records in order, per output file, and their
    file names, images `[n, S, S, 3]` and label maps `[n, S, S, 2]` (what decoding the PNGs gives).

    Every scene has its own random stream (`draw_scene`), so any split of the indices into chunks, in any
    process, writes the same files and records. `threads` is accepted for `run_parallel` and unused.
    """
    records: dict[str, list[dict]] = {"train.json": [], "captions.json": []} if split == "train" else {"eval.jsonl": []}
    names: list[str] = []
    images = np.zeros((len(indices), size, size, 3), np.uint8)
    label_maps = np.zeros((len(indices), size, size, 2), np.uint8)
    for k, i in enumerate(tqdm(indices, desc=f"ShapesWorld {split}", disable=not progress)):
        rng, objects, image, labels = draw_scene(seed, split, i, size, max_objects)
        name = f"{split}_{i:06d}.png"
        image.save(out / "images" / name)
        labels.save(out / "labels" / name)
        names.append(name)
        images[k] = np.asarray(image)  # PNG is lossless: the same bytes as decoding the file
        label_maps[k] = np.asarray(labels)[..., :2]
        rel = f"images/{name}"
        if split == "train":
            conversation, asked = [], set()
            for _turn in range(turns):
                for _ in range(8):  # a question already asked about this image could be answered from the chat
                    if weights is None:
                        qtype = types[int(rng.integers(len(types)))]
                    else:
                        qtype = types[int(rng.choice(len(types), p=weights))]
                    made = (_question(rng, objects, qtype, size, relation_pairs)
                            or (_question(rng, objects, "existence", size) if fallback else None))
                    if made is not None and made[0] not in asked:
                        break
                if made is None:  # without the fallback: no type drawn could be asked about this image
                    continue
                question, answer = made
                asked.add(question)
                if not conversation:
                    question = "<image>\n" + question
                conversation += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
            if conversation:
                records["train.json"].append({"id": f"train-{i}", "image": rel, "conversations": conversation})
            records["captions.json"].append({"id": f"caption-{i}", "image": rel, "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."},
                {"from": "gpt", "value": caption(objects)},
            ]})
        else:
            for qtype in types:
                made = _question(rng, objects, qtype, size, relation_pairs)
                if made is None:
                    continue
                question, answer = made
                records["eval.jsonl"].append({"question_id": f"eval-{i}-{qtype}", "image": rel, "question": question,
                                              "answer": answer, "type": qtype})
    return records, names, images, label_maps


def write_arrays(out: str | Path, split: str, names: list[str], images: np.ndarray, labels: np.ndarray) -> Path:
    """`ARRAYS` for `split`: the images and label maps ordered by sorted file name, uncompressed."""
    order = sorted(range(len(names)), key=lambda k: names[k])
    if order != list(range(len(names))):  # drawn in index order, which is name order: no copy needed
        names, images, labels = [names[k] for k in order], images[order], labels[order]
    path = Path(out) / ARRAYS.format(split=split)
    partial = path.with_name(f".{path.name}.tmp")  # a killed run leaves no half-written archive under the name
    with open(partial, "wb") as file:
        np.savez(file, names=np.array(names, dtype=str), images=images, labels=labels)
    partial.replace(path)
    return path


TEXT_CORPUS = "text.json"
SCENE_BLANK = "blank"  # the word of a grid cell no object covers
OBJECT_ID_STRIDE = 16  # object_ids: shape id * 16 + colour id (colour ids stay below 16)


def object_ids(labels: np.ndarray) -> np.ndarray:
    """One id per (shape, colour) of a label map `[..., S, S, 2]`: shape id * `OBJECT_ID_STRIDE` + colour id
    (0..15 is background); `[..., S, S]` int64."""
    return labels[..., 0].astype(np.int64) * OBJECT_ID_STRIDE + labels[..., 1]


def without_image(text: str) -> str:
    """A turn's text with the `<image>` mark (and the newline after it) removed."""
    return text.replace(f"{IMAGE_TOKEN}\n", "").replace(IMAGE_TOKEN, "").strip()


def scene_words(labels: np.ndarray, grid: int, min_cover: float = 0.25, row_end: str | None = None,
                cell_names: bool = False) -> str:
    """The scene of a label map `[S, S, 2]` as `grid * grid` words in raster order, one per cell, as the image
    tokens are: the (colour, shape) covering most of the cell as one word ("bluetriangle"), or `SCENE_BLANK`
    when no object covers `min_cover` of it. The text analogue of the image the LLM sees. `row_end`: a word
    closing every row (as LLaVA-NeXT's image-newline token closes each row of image tokens). `cell_names`:
    each cell's word follows a word naming the cell ("r2c5": row 2, column 5), the text analogue of a 2-D
    position embedding on each image token."""
    cell = labels.shape[0] // grid
    ids = object_ids(labels[:grid * cell, :grid * cell])  # [grid * cell, grid * cell]
    cells = ids.reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3).reshape(grid * grid, cell * cell)
    colours = list(COLOURS)
    words = []
    for pixels in cells:  # [cell * cell] object ids of one cell
        covered = np.bincount(pixels, minlength=OBJECT_ID_STRIDE * (len(SHAPES) + 1))
        covered[:OBJECT_ID_STRIDE] = 0  # shape id 0: background
        best = int(covered.argmax())
        if covered[best] >= min_cover * cell * cell:
            shape, colour = divmod(best, OBJECT_ID_STRIDE)
            words.append(f"{colours[colour - 1]}{SHAPES[shape - 1]}")
        else:
            words.append(SCENE_BLANK)
    if cell_names:
        words = [f"r{k // grid}c{k % grid} {word}" for k, word in enumerate(words)]
    if row_end is not None:
        words = [word for row in range(grid) for word in words[row * grid:(row + 1) * grid] + [row_end]]
    return " ".join(words)


def question_type(question: str) -> str | None:
    """The ShapesWorld type of a question, from its wording (None: not one of the world's questions, e.g. the
    caption prompt)."""
    if question.startswith("How many"):
        return "count"
    if question.startswith("Is there"):
        return "existence"
    if question.startswith("What colour"):
        return "colour"
    if " half?" in question:
        return "position"
    if " left or right of " in question or " above or below " in question:
        return "relation"
    return None


def text_records(records: list[dict], scenes: dict[str, str] | None = None, types: list[str] | None = None,
                 single_turn: bool = False) -> list[dict]:
    """LLaVA records without images: each `<image>` mark replaced by its image's scene text (`scenes`: image file
    name -> text, e.g. `scene_words`) or, without `scenes`, removed.

    `types` keeps only the turns whose question is of those types (`question_type`; records left with none are
    dropped); `single_turn` makes one record per kept turn. The scene goes before the first kept question of
    each record, where the image stood (ShapesWorld marks the image in a record's first turn), also when that
    turn itself was dropped.
    """
    prefix = "text" if scenes is None else "scene"
    out = []
    for record in records:
        scene = None if scenes is None else scenes[Path(record["image"]).name]
        turns = record["conversations"]
        pairs = [(human["value"], gpt["value"]) for human, gpt in zip(turns[::2], turns[1::2])
                 if types is None or question_type(without_image(human["value"])) in types]
        groups = [[pair] for pair in pairs] if single_turn else ([pairs] if pairs else [])
        for k, group in enumerate(groups):
            conversation = []
            for i, (question, answer) in enumerate(group):
                text = without_image(question)
                if scene is not None and i == 0:
                    text = f"{scene}\n{text}"
                conversation += [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]
            suffix = f"-{k}" if single_turn else ""
            out.append({"id": f"{prefix}-{record['id']}{suffix}", "conversations": conversation})
    return out


def write_text_corpus(out: str | Path, records: list[dict] | None = None, scenes: dict[str, str] | None = None,
                      name: str = TEXT_CORPUS) -> Path:
    """`name` in `out`: every training conversation and caption as text (`text_records`), its image removed
    (`text.json`) or replaced by its scene text (`scenes`).

    A language model pre-trained on the first learns the world's vocabulary and answer formats (and the
    answers' priors), nothing about any image; on the second it also learns to answer from a scene laid out
    as the image tokens are. `records` default to the folder's train.json and captions.json.
    """
    out = Path(out)
    if records is None:
        records = json.loads((out / "train.json").read_text()) + json.loads((out / "captions.json").read_text())
    path = out / name
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(json.dumps(text_records(records, scenes)))
    partial.replace(path)
    return path


def generate(out_dir: str | Path, seed: int = 0, n_train: int = 2000, n_eval: int = 200, size: int = 64,
             turns: int = 3, progress: bool = True, max_objects: int = MAX_OBJECTS,
             type_weights: dict[str, float] | None = None, types: list[str] | None = None, jobs: int = 1,
             relation_pairs: str = "apart", fallback: bool = True) -> Path:
    """Write a ShapesWorld dataset (see the module docstring) and return its folder.

    `max_objects`: each image holds 1..max_objects objects. `types`: the question types the world asks, in
    training and in the benchmark (default `DEFAULT_TYPES`; `position` is opt-in). `type_weights`: how often
    each of them is drawn for a training turn (default uniform); the benchmark asks every one that applies.
    `relation_pairs`: which pairs a relation question asks about (`RELATION_PAIRS`): "apart", any two objects
    that do not overlap along the asked axis; "across", two objects on either side of the image's midline.
    `fallback`: a training turn whose drawn type does not apply to the image (no colour named once, no
    pair of objects apart) asks existence instead; without it such turns are dropped, and so are training
    records left with none (a world of one type, e.g. relation alone). `jobs` > 1 draws the scenes in that
    many processes; the files written are the same.
    """
    from viral.parallel import run_parallel

    if max_objects < 1:
        raise ValueError(f"max_objects {max_objects}: each image holds at least one object")
    if relation_pairs not in RELATION_PAIRS:
        raise ValueError(f"relation_pairs {relation_pairs!r}: give one of {RELATION_PAIRS}")
    types = list(DEFAULT_TYPES if types is None else types)
    if not types or set(types) - set(QUESTION_TYPES) or len(set(types)) != len(types):
        raise ValueError(f"types {types}: give distinct question types among {QUESTION_TYPES}")
    weights = None
    if type_weights is not None:
        unknown = sorted(set(type_weights) - set(types))
        if unknown or not any(type_weights.values()) or min(type_weights.values()) < 0:
            raise ValueError(f"type_weights {type_weights}: give non-negative weights for {types}")
        weights = np.array([float(type_weights.get(t, 0.0)) for t in types])
        weights = weights / weights.sum()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    written: dict[str, list[dict]] = {}
    for split, count in (("train", n_train), ("eval", n_eval)):
        step = -(-count // max(jobs, 1)) or 1  # ceil(count / jobs): one chunk per process
        chunks = [range(start, min(count, start + step)) for start in range(0, count, step)] or [range(0)]
        calls = [(out, seed, split, chunk, size, max_objects, turns, types, weights, relation_pairs, fallback,
                  progress and jobs <= 1)
                 for chunk in chunks]
        names, image_parts, label_parts = [], [], []
        for part, part_names, part_images, part_labels in run_parallel(_scene_records, calls, jobs):
            for name, records in part.items():
                written.setdefault(name, []).extend(records)
            names += part_names
            image_parts.append(part_images)
            label_parts.append(part_labels)
        images, labels = (parts[0] if len(parts) == 1 else np.concatenate(parts)
                          for parts in (image_parts, label_parts))
        write_arrays(out, split, names, images, labels)
    (out / "train.json").write_text(json.dumps(written["train.json"]))
    (out / "captions.json").write_text(json.dumps(written["captions.json"]))
    write_text_corpus(out, written["train.json"] + written["captions.json"])
    (out / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in written["eval.jsonl"]))
    meta = {"seed": seed, "n_train": n_train, "n_eval": n_eval, "size": size, "turns": turns,
            "max_objects": max_objects, "type_weights": type_weights, "shapes": SHAPES,
            "colours": list(COLOURS), "question_types": types, "relation_pairs": relation_pairs,
            "fallback": fallback}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return out
