"""`viral analyze cknna|attention|pca|shuffle`: the paper's analyses of a checkpoint, each writing a
JSON file with the numbers and a PNG figure into `--out`."""

from __future__ import annotations

import argparse
from pathlib import Path

from viral.errors import UserError


def _labels(paths: list[str]) -> list[str]:
    """Short names for checkpoints: the folder name, made unique with an index when needed."""
    names = [Path(p.rstrip("/")).name or p for p in paths]
    if len(set(names)) < len(names):
        names = [f"{i}:{name}" for i, name in enumerate(names)]
    return names


def _load(path: str, args, eager: bool = False):
    from viral.infer import Predictor

    predictor = Predictor.from_pretrained(path, device=args.device, dtype=args.dtype)
    if eager:
        from viral.analysis.attention import use_eager_attention

        use_eager_attention(predictor.model)
    return predictor


def _image(path: str):
    from PIL import Image

    if not Path(path).is_file():
        raise UserError(f"--image {path}: no such file")
    return Image.open(path).convert("RGB")


def _done(*paths) -> int:
    for path in paths:
        print(f"wrote {path}")
    return 0


def run_cknna(args) -> int:
    from viral.analysis.cknna import layer_cknna, plot_layer_cknna
    from viral.analysis.report import load_examples, write_json

    examples = load_examples(args.data, limit=args.n_images)
    results = {}
    for label, path in zip(_labels(args.model_path), args.model_path):
        predictor = _load(path, args)
        teacher = None
        if args.teacher:
            from viral.align.teachers import build_teacher
            from viral.model import image_grid

            teacher = build_teacher(args.teacher, image_grid(predictor.model),
                                    vision_hidden_size=predictor.model.config.vision_config.hidden_size,
                                    device=predictor.device)
            if not teacher.needs_pixels:  # the `encoder` target: already the "encoder" curve
                teacher = None
        result = layer_cknna(predictor, examples, k=args.k, teacher=teacher, batch_size=args.batch_size)
        results[label] = {"model_path": path, "teacher": args.teacher, **result}
        for reference, curve in result["curves"].items():
            numbers = " ".join(f"{v:.3f}" for v in curve["mean"])
            print(f"{label} vs {reference}: {numbers}")
    out = Path(args.out)
    plot_layer_cknna(results, out / "cknna.png")
    return _done(write_json({"data": str(args.data), "results": results}, out / "cknna.json"), out / "cknna.png")


def run_attention(args) -> int:
    import numpy as np

    from viral.analysis import attention
    from viral.analysis.report import load_examples, write_json

    out = Path(args.out)
    labels = _labels(args.model_path)
    if args.data:
        examples = load_examples(args.data, limit=args.n_images, prompt=args.prompt)
        results = {}
        for label, path in zip(labels, args.model_path):
            results[label] = {"model_path": path, **attention.dataset_entropy(_load(path, args, eager=True),
                                                                               examples, args.batch_size)}
            numbers = " ".join(f"{v:.3f}" for v in results[label]["mean_entropy_per_layer"])
            print(f"{label} mean spatial entropy per layer: {numbers}")
        attention.plot_dataset_entropy(results, out / "attention_entropy.png")
        return _done(write_json({"data": str(args.data), "results": results}, out / "attention_entropy.json"),
                     out / "attention_entropy.png")
    if not args.image:
        raise UserError("viral analyze attention needs --image (with --prompt) or --data")
    image = _image(args.image)
    prompt = args.prompt or "Describe the image."
    written, results = [], {}
    for label, path in zip(labels, args.model_path):
        predictor = _load(path, args, eager=True)
        maps = attention.text_to_image_attention(predictor.model, predictor.prepare([image], [prompt]))[0]
        report = attention.attention_report(maps)  # maps: [L, H, rows, cols]
        suffix = "" if len(labels) == 1 else f"_{len(results)}"
        results[label] = {"model_path": path, "maps_file": f"attention_maps{suffix}.npy", **report}
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / f"attention_maps{suffix}.npy", maps.numpy())
        attention.plot_attention(image, maps, report, out / f"attention{suffix}.png", title=f"{label}: {prompt}")
        written += [out / f"attention{suffix}.png", out / f"attention_maps{suffix}.npy"]
        if args.per_head:
            attention.plot_attention_heads(maps, out / f"attention_heads{suffix}.png")
            written.append(out / f"attention_heads{suffix}.png")
    data = {"image": args.image, "prompt": prompt,
            "query": "last prompt position (predicts the answer's first token)", "results": results}
    return _done(write_json(data, out / "attention.json"), *written)


def run_pca(args) -> int:
    from viral.analysis.pca import pca_maps, plot_pca
    from viral.analysis.report import write_json
    from viral.analysis.states import num_llm_layers

    image = _image(args.image)
    prompt = args.prompt or "Describe the image."
    maps_by_model, results = {}, {}
    for label, path in zip(_labels(args.model_path), args.model_path):
        predictor = _load(path, args)
        layers = args.layer or [num_llm_layers(predictor.model) // 2]
        maps = pca_maps(predictor, image, prompt, layers)
        maps_by_model[label] = maps
        results[label] = {"model_path": path, "layers": {
            str(layer): {"explained_variance_ratio": m["explained_variance_ratio"], "rgb": m["rgb"].tolist()}
            for layer, m in maps.items()}}
    out = Path(args.out)
    plot_pca(image, maps_by_model, out / "pca.png", title=prompt)
    return _done(write_json({"image": args.image, "prompt": prompt, "results": results}, out / "pca.json"),
                 out / "pca.png")


def run_shuffle(args) -> int:
    from viral.analysis.report import write_json
    from viral.analysis.shuffle import plot_shuffle, shuffle_accuracy

    out = Path(args.out)
    results = {}
    for label, path in zip(_labels(args.model_path), args.model_path):
        result = shuffle_accuracy(_load(path, args), args.benchmark, args.data, permutation=args.permutation,
                                  seed=args.seed, limit=args.limit, batch_size=args.batch_size,
                                  output_dir=out / label)
        results[label] = {"model_path": path, **result}
        print(f"{label}: {result['headline']} original {result['original']['headline']['value']:.2f}  "
              f"{args.permutation} {result['shuffled']['headline']['value']:.2f}  drop {result['drop']:+.2f}")
    plot_shuffle(results, out / "shuffle.png")
    data = {"benchmark": args.benchmark, "data": str(args.data), "results": results}
    return _done(write_json(data, out / "shuffle.json"), out / "shuffle.png")


def _common(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("--model-path", action="append", required=True,
                        help="checkpoint folder or llava-hf id; repeat to compare checkpoints on one plot")
    parser.add_argument("--out", default=out, help=f"output folder (default {out})")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: auto)")
    parser.add_argument("--batch-size", type=int, default=8)


def register(subparsers) -> None:
    parser = subparsers.add_parser("analyze", help="the paper's analyses: cknna, attention, pca, shuffle",
                                   description=__doc__)
    commands = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    cknna = commands.add_parser("cknna", help="layer-wise CKNNA of image-token states vs encoder/teacher features")
    _common(cknna, "runs/analysis/cknna")
    cknna.add_argument("--data", required=True, help="folder of images, or .jsonl/.json records with `image`")
    cknna.add_argument("--teacher", default=None, help="teacher id (as align.vra_target), e.g. dinov2-vit-b")
    cknna.add_argument("--k", type=int, default=10, help="nearest neighbours (default 10)")
    cknna.add_argument("--n-images", type=int, default=64)
    cknna.set_defaults(func=run_cknna)

    attention = commands.add_parser("attention", help="text-to-image attention maps and spatial entropy")
    _common(attention, "runs/analysis/attention")
    attention.add_argument("--image", help="one image: maps per layer and head")
    attention.add_argument("--prompt", help="the question (with --data: replaces every record's question)")
    attention.add_argument("--data", help="a dataset instead of --image: mean entropy per layer")
    attention.add_argument("--n-images", type=int, default=64)
    attention.add_argument("--per-head", action="store_true", help="also plot every head's map")
    attention.set_defaults(func=run_attention)

    pca = commands.add_parser("pca", help="first three principal components of a layer's image states as RGB")
    _common(pca, "runs/analysis/pca")
    pca.add_argument("--image", required=True)
    pca.add_argument("--prompt", default=None)
    pca.add_argument("--layer", type=int, action="append",
                     help="LLM layer (0 = input embeddings); repeat for several (default: the middle layer)")
    pca.set_defaults(func=run_pca)

    shuffle = commands.add_parser("shuffle", help="accuracy with the image-token order permuted")
    _common(shuffle, "runs/analysis/shuffle")
    shuffle.add_argument("--benchmark", default="shapes",
                         help="a `viral eval` benchmark: shapes, cvbench, whatsup, mmvp, pope, mme, mmstar")
    shuffle.add_argument("--data", required=True, help="the benchmark's local copy (as for `viral eval`)")
    shuffle.add_argument("--permutation", default="random", choices=["random", "reverse", "identity"])
    shuffle.add_argument("--seed", type=int, default=0)
    shuffle.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    shuffle.set_defaults(func=run_shuffle)
