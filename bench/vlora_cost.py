"""Cost of `connector: vlora` against `connector: llava`, measured side by side in one run.

Both models share one LLM and one vision tower (weights copied, so each trains its own). For a
prompt of C text tokens and one image the script measures:
  - prefill FLOPs, counted with `torch.utils.flop_counter.FlopCounterMode` (vision tower +
    projector/generator + LLM up to the first next-token logits);
  - prefill wall time (median of interleaved repetitions);
  - one full fine-tuning step (LLM + projector/generator trained, vision tower frozen, AdamW):
    median wall time and peak tensor memory (every live tensor storage: parameters, gradients,
    optimizer states, activations, temporaries);
and prints vlora / llava ratios. An analytic count of the same matmul FLOPs is checked against the
counter on the measured models, then evaluated at the paper's setting (Vicuna-7B, CLIP ViT-L/14-336
with 576 image tokens, C = 32, default generator) to give `flops_ratio_7b`.

    PYTHONPATH=src python bench/vlora_cost.py [--json PATH] [--reps 5] [--hidden 256 --layers 8 ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, LlavaConfig
from transformers import LlavaForConditionalGeneration

from viral.vlora import VLoRAConfig, VLoRAModel

# ---- analytic matmul FLOPs (multiply-add = 2 FLOPs; what FlopCounterMode counts) -----------------


@dataclass
class LLMDims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int


@dataclass
class VisionDims:
    hidden: int
    layers: int
    ffn: int
    patch: int
    patches: int  # N, image tokens after dropping CLS


@dataclass
class GeneratorDims:
    hidden: int  # D
    depth: int
    rank: int
    updates: int  # k, updated LLM layers
    types: str


def llm_flops(d: LLMDims, tokens: int, logits_tokens: int = 1) -> int:
    """Gated-MLP decoder over `tokens` positions (full causal SDPA), lm_head on `logits_tokens`."""
    t = tokens
    q_out, kv_out = d.heads * d.head_dim, d.kv_heads * d.head_dim
    proj = 2 * t * d.hidden * (q_out + 2 * kv_out) + 2 * t * q_out * d.hidden
    attention = 4 * t * t * d.head_dim * d.heads  # QKᵀ and AV
    mlp = 3 * 2 * t * d.hidden * d.ffn
    return d.layers * (proj + attention + mlp) + 2 * logits_tokens * d.hidden * d.vocab


def vision_flops(v: VisionDims) -> int:
    """CLIP ViT over N patches + CLS, every layer (llava-hf and VLoRA both run the whole tower)."""
    t = v.patches + 1
    patch_embed = 2 * v.patches * 3 * v.patch * v.patch * v.hidden
    per_layer = 4 * 2 * t * v.hidden * v.hidden + 4 * t * t * v.hidden + 2 * 2 * t * v.hidden * v.ffn
    return patch_embed + v.layers * per_layer


def projector_flops(v: VisionDims, d: LLMDims) -> int:
    """LLaVA-1.5 two-layer MLP projector on N patches."""
    return 2 * v.patches * v.hidden * d.hidden + 2 * v.patches * d.hidden * d.hidden


def generator_flops(g: GeneratorDims, v: VisionDims, d: LLMDims) -> int:
    """Perceptual-weights generator: input projection, per type `depth` decoder blocks and the head."""
    n, k, dd = v.patches, g.updates, g.hidden
    d_in = {"q": d.hidden, "k": d.hidden, "v": d.hidden, "o": d.heads * d.head_dim, "m": d.hidden}
    self_attn = 4 * 2 * k * dd * dd + 4 * k * k * dd
    cross_attn = 2 * 2 * k * dd * dd + 2 * 2 * n * dd * dd + 4 * k * n * dd  # q, out on k; k, v on N
    mlp = 2 * 2 * k * dd * 4 * dd
    per_type = g.depth * (self_attn + cross_attn + mlp)
    return 2 * n * v.hidden * dd + sum(per_type + 2 * k * dd * d_in[t] * g.rank for t in g.types)


def injection_flops(g: GeneratorDims, d: LLMDims, tokens: int) -> int:
    """Per-sample low-rank updates in the LLM: (x A) then · Bᵀ for each updated layer and type."""
    q_out, kv_out = d.heads * d.head_dim, d.kv_heads * d.head_dim
    io = {"q": (d.hidden, q_out), "k": (d.hidden, kv_out), "v": (d.hidden, kv_out), "o": (q_out, d.hidden), "m": (d.hidden, d.hidden)}
    return g.updates * sum(2 * tokens * g.rank * (io[t][0] + io[t][1]) for t in g.types)


def prefill_flops(connector: str, d: LLMDims, v: VisionDims, g: GeneratorDims, text_tokens: int) -> int:
    if connector == "llava":
        return vision_flops(v) + projector_flops(v, d) + llm_flops(d, v.patches + text_tokens)
    return vision_flops(v) + generator_flops(g, v, d) + llm_flops(d, text_tokens) + injection_flops(g, d, text_tokens)


PAPER_LLM = LLMDims(hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128, ffn=11008, vocab=32000)  # Vicuna-7B
PAPER_VISION = VisionDims(hidden=1024, layers=24, ffn=4096, patch=14, patches=576)  # CLIP ViT-L/14-336
PAPER_GENERATOR = GeneratorDims(hidden=512, depth=8, rank=64, updates=32 // 4, types="qkvom")

# ---- the measured models ------------------------------------------------------------------------


def build_models(args):
    torch.manual_seed(0)
    image_token = args.vocab  # one extra id, used by llava only
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=args.vocab + 1,
            hidden_size=args.hidden,
            intermediate_size=args.ffn,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            num_key_value_heads=args.kv_heads,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
        )
    )
    vision = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=args.vision_hidden,
            intermediate_size=4 * args.vision_hidden,
            num_hidden_layers=args.vision_layers,
            num_attention_heads=args.vision_heads,
            image_size=args.image_size,
            patch_size=args.patch_size,
        )
    )
    patches = (args.image_size // args.patch_size) ** 2
    llava_config = LlavaConfig(
        vision_config=vision.config,
        text_config=llm.config,
        image_token_index=image_token,
        image_seq_length=patches,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    llava = LlavaForConditionalGeneration(llava_config)
    llava.model.language_model.load_state_dict(llm.model.state_dict())
    llava.lm_head.load_state_dict(llm.lm_head.state_dict())
    llava.model.vision_tower.load_state_dict(vision.state_dict())
    llava.model.vision_tower.requires_grad_(False)
    vlora_config = VLoRAConfig(
        rank=args.rank, alpha=args.rank, hidden_size=args.gen_hidden, depth=args.gen_depth,
        num_heads=args.gen_heads, skip_layers=args.skip_layers, types=args.types,
    )
    vlora = VLoRAModel(copy.deepcopy(llm), copy.deepcopy(vision), vlora_config)
    d = LLMDims(args.hidden, args.layers, args.heads, args.kv_heads, args.hidden // args.heads, args.ffn, args.vocab + 1)
    v = VisionDims(args.vision_hidden, args.vision_layers, 4 * args.vision_hidden, args.patch_size, patches)
    g = GeneratorDims(args.gen_hidden, args.gen_depth, args.rank, len(vlora.update_layers), vlora.vlora_config.types)
    return llava.eval(), vlora.eval(), image_token, (d, v, g)


def make_inputs(args, image_token: int, patches: int, batch: int):
    torch.manual_seed(1)
    text = torch.randint(0, args.vocab, (batch, args.text_tokens))
    pixel_values = torch.randn(batch, 3, args.image_size, args.image_size)
    llava_ids = torch.cat([text[:, :1], torch.full((batch, patches), image_token), text[:, 1:]], dim=1)
    llava_labels = llava_ids.masked_fill(llava_ids == image_token, -100)
    return {
        "llava": dict(input_ids=llava_ids, pixel_values=pixel_values, labels=llava_labels),
        "vlora": dict(input_ids=text, pixel_values=pixel_values, labels=text),
    }


def prefill(model, inputs):
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"], logits_to_keep=1).logits


# torch's counter knows the CUDA attention kernels but not the CPU ones; same shapes, same cost.
def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _fused_mha_flops(query_shape, key_shape, value_shape, embed_dim, *args, out_shape=None, **kwargs) -> int:
    """nn.MultiheadAttention's inference fast path: q/k/v projections, attention, output projection."""
    b, t, e = query_shape
    s = key_shape[1]
    return 2 * b * e * e * (t + 2 * s) + 4 * b * t * s * e + 2 * b * t * e * e


CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._native_multi_head_attention: _fused_mha_flops,
}


def count_flops(model, inputs) -> int:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        prefill(model, inputs)
    return counter.get_total_flops()


def make_step(model):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step(inputs):
        model.train()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, optimizer


def interleaved_median(fns: dict, reps: int) -> dict[str, float]:
    """Run each fn once per round, alternating, so that load from other processes hits both alike."""
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of all tensor storages alive at once: the tracked baseline plus every op output, freed on release."""

    def __init__(self, *baseline: torch.Tensor):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        for t in baseline:
            self._track(t)

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def _track(self, t) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        storage = t.untyped_storage()
        key = storage._cdata  # the C++ storage, shared by every view
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self._track(t)
        return out


def peak_step_memory(model, optimizer, step, inputs) -> int:
    """Peak bytes of tensors live during one training step: parameters, buffers, optimizer states
    (created by a warm-up step), gradients, activations and temporaries."""
    states = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    baseline = [*model.parameters(), *model.buffers(), *states, *tree_flatten(inputs)[0]]
    with LiveTensorBytes(*baseline) as tracker:
        step(inputs)
    return tracker.peak


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the numbers to this JSON file")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 keeps timings stable on a shared machine)")
    parser.add_argument("--text-tokens", type=int, default=32, help="C, text tokens of the prompt")
    parser.add_argument("--batch", type=int, default=4, help="training-step batch size")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--ffn", type=int, default=688)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--vision-hidden", type=int, default=192)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--vision-heads", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--gen-hidden", type=int, default=128)
    parser.add_argument("--gen-depth", type=int, default=2)
    parser.add_argument("--gen-heads", type=int, default=4)
    parser.add_argument("--skip-layers", type=int, default=4)
    parser.add_argument("--types", default="qkvom")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    llava, vlora, image_token, (d, v, g) = build_models(args)
    models = {"llava": llava, "vlora": vlora}
    one = make_inputs(args, image_token, v.patches, batch=1)
    many = make_inputs(args, image_token, v.patches, batch=args.batch)

    flops = {name: count_flops(m, one[name]) for name, m in models.items()}
    analytic = {name: prefill_flops(name, d, v, g, args.text_tokens) for name in models}
    for name in models:
        prefill(models[name], one[name])  # warm-up
    prefill_time = interleaved_median({n: (lambda n=n: prefill(models[n], one[n])) for n in models}, args.reps)

    steps = {name: make_step(m) for name, m in models.items()}
    for name in models:
        steps[name][0](many[name])  # warm-up: allocates the optimizer states
    step_time = interleaved_median({n: (lambda n=n: steps[n][0](many[n])) for n in models}, args.reps)
    peak = {n: peak_step_memory(models[n], steps[n][1], steps[n][0], many[n]) for n in models}
    trainable = {n: sum(p.numel() for p in m.parameters() if p.requires_grad) for n, m in models.items()}

    paper = {c: prefill_flops(c, PAPER_LLM, PAPER_VISION, PAPER_GENERATOR, args.text_tokens) for c in models}
    result = {
        "prefill_flops_ratio": flops["vlora"] / flops["llava"],
        "prefill_time_ratio": prefill_time["vlora"] / prefill_time["llava"],
        "train_step_ratio": step_time["vlora"] / step_time["llava"],
        "peak_mem_ratio": peak["vlora"] / peak["llava"],
        "flops_ratio_7b": paper["vlora"] / paper["llava"],
        "llava": {"prefill_flops": flops["llava"], "prefill_flops_analytic": analytic["llava"],
                  "prefill_s": prefill_time["llava"], "train_step_s": step_time["llava"],
                  "peak_mem_bytes": peak["llava"], "trainable_params": trainable["llava"], "prefill_flops_7b": paper["llava"]},
        "vlora": {"prefill_flops": flops["vlora"], "prefill_flops_analytic": analytic["vlora"],
                  "prefill_s": prefill_time["vlora"], "train_step_s": step_time["vlora"],
                  "peak_mem_bytes": peak["vlora"], "trainable_params": trainable["vlora"], "prefill_flops_7b": paper["vlora"]},
        "setting": {k: val for k, val in vars(args).items() if k != "json"} | {"image_tokens": v.patches, "updated_layers": g.updates},
    }
    print_table(result, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def print_table(r: dict, args) -> None:
    s = r["setting"]
    print(
        f"LLM: llama {args.layers}L d={args.hidden} ffn={args.ffn} heads={args.heads}/{args.kv_heads} vocab={args.vocab + 1}; "
        f"vision: CLIP {args.vision_layers}L d={args.vision_hidden}, {s['image_tokens']} patches; "
        f"generator: D={args.gen_hidden} depth={args.gen_depth} r={args.rank} types={args.types} "
        f"k={s['updated_layers']}; C={args.text_tokens} text tokens; train batch {args.batch}; "
        f"{args.threads} thread(s), median of {args.reps} interleaved reps"
    )
    rows = [
        ("prefill FLOPs (counted)", "prefill_flops", lambda x: f"{x / 1e9:.3f} G"),
        ("prefill FLOPs (analytic)", "prefill_flops_analytic", lambda x: f"{x / 1e9:.3f} G"),
        ("prefill time", "prefill_s", lambda x: f"{x * 1e3:.1f} ms"),
        ("train step time", "train_step_s", lambda x: f"{x * 1e3:.1f} ms"),
        ("train step peak memory", "peak_mem_bytes", lambda x: f"{x / 2**20:.1f} MiB"),
        ("trainable parameters", "trainable_params", lambda x: f"{x / 1e6:.2f} M"),
    ]
    print(f"{'':40}{'llava':>14}{'vlora':>14}{'vlora/llava':>14}")
    for label, key, fmt in rows:
        a, b = r["llava"][key], r["vlora"][key]
        print(f"{label:40}{fmt(a):>14}{fmt(b):>14}{b / a:>14.3f}")
    a, b = r["llava"]["prefill_flops_7b"], r["vlora"]["prefill_flops_7b"]
    print(f"{'prefill FLOPs 7B/576/C=' + str(args.text_tokens) + ' (analytic)':40}{a / 1e12:>12.3f} T{b / 1e12:>12.3f} T{b / a:>14.3f}")


if __name__ == "__main__":
    main()
