"""`viral infer`: answer a prompt about an image with a trained or llava-hf checkpoint."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "infer", help="answer a prompt about an image with a checkpoint",
        description="Generate with a folder written by `viral train` or any llava-hf checkpoint, "
                    "using the checkpoint's chat template.",
    )
    parser.add_argument("--model-path", required=True, help="checkpoint folder or hub id")
    parser.add_argument("--image-path", default=None, help="image file (omit for a text-only prompt)")
    parser.add_argument("--prompt", required=True, help="the question")
    parser.add_argument("--temperature", type=float, default=0.2, help="0 for greedy decoding (default 0.2)")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on GPU)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from viral.data.images import load_image
    from viral.infer import Predictor

    predictor = Predictor.from_pretrained(args.model_path, device=args.device, dtype=args.dtype)
    image = load_image(args.image_path) if args.image_path else None
    [answer] = predictor.generate([image], [args.prompt], max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    print(answer)
    return 0
