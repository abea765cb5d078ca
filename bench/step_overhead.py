"""What VIRAL costs per training step, side by side in one process, the arms interleaved step by step.

Arms, all built with `viral.train.build_trainer` from the same student (same tiny-preset folder, same seed),
full fine-tuning, the same data:
1. `baseline`      plain LLaVA fine-tuning (align.vra_loss false);
2. `live_teacher`  VIRAL, the teacher run every step on its own pixels (prepared in the data pipeline);
3. `teacher_cache` VIRAL, targets read from a cache written by `viral.align.cache.build_teacher_cache`;
4. `reference`     the reference implementation's approach rebuilt here: `output_hidden_states=True` (all
                   layers), a Python loop over the samples of the batch, the teacher run every step on the
                   student's CLIP-normalised pixels resized to the teacher's input.
A step is everything a training step does: fetch the next batch from the Trainer's own data loader (image
decoding, the student's and the teacher's preprocessing or the cache read), forward, backward, AdamW step.

Step time: the median over the timed rounds; each round runs one step of every arm, in an order rotated
every round, so slow periods of a shared machine hit all arms alike. `x base` is the ratio of medians;
`paired` the median over rounds of (this arm's step / the baseline's step in the same round), which
cancels slow drifts of the machine's load.

Peak memory: bytes held by PyTorch's CPU allocator for the arm, = its resident tensors at the start of a
step (weights, buffers, optimizer state, and the teacher's weights when the arm holds one; storages counted
once) + the highest level of allocations during one step, recorded by `torch.profiler` with
`profile_memory=True` (every allocation and free of the c10 CPU allocator, in order). Not tracemalloc: it
sees only allocations made through Python's allocator, and tensor memory bypasses it. Not process RSS: the
four arms share one process, so RSS cannot be split between them, and the allocator's caching keeps it
from falling between steps. Memory-mapped cache files are page cache, not allocator memory; the tensors
read from them are counted.

Memory lower bound: the alignment head's weights, gradients and two Adam moments over the baseline's peak.

FLOP lower bound: `torch.utils.flop_counter.FlopCounterMode` over one baseline step (forward and backward)
and over the alignment head alone on that batch's image-token states (forward and backward);
(model + head) / model is the least arm 3's step ratio can be with free targets. It counts matmuls,
convolutions and attention only.

Presets: `tiny` is the project's tiny preset; `small` is the same builder at the largest size that runs a
step in a few seconds on 2 CPU cores. The teacher is a random DINOv2 (ViT-S width for `small`); the
alignment projector keeps the paper's ratio projector_dim / LLM width = 2048 / 4096.

    python bench/step_overhead.py [--presets tiny,small] [--steps N] [--warmup 2] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from viral.align.cache import build_teacher_cache  # noqa: E402
from viral.config import load_config  # noqa: E402
from viral.data.shapes import generate  # noqa: E402
from viral.train import build_trainer  # noqa: E402

PRESETS = {
    "tiny": {"model": dict(hidden_size=128, num_layers=4, vision_hidden_size=64, vision_layers=4, image_size=64,
                           patch_size=8),
             "teacher": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14),
             "projector_dim": 64, "batch_size": 8, "target_layers": [2], "images": 64, "rounds": 80},
    "small": {"model": dict(hidden_size=512, num_layers=8, vision_hidden_size=256, vision_layers=6, image_size=224,
                            patch_size=16),
              "teacher": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, image_size=224,
                              patch_size=14),
              "projector_dim": 256, "batch_size": 4, "target_layers": [4], "images": 48, "rounds": 20},
}
ARMS = ["baseline", "live_teacher", "teacher_cache", "reference"]
ARM_TITLES = {"baseline": "1 baseline (no VIRAL)", "live_teacher": "2 VIRAL, live teacher",
              "teacher_cache": "3 VIRAL, teacher cache", "reference": "4 reference approach"}


def build_teacher_folder(out: Path, spec: dict) -> Path:
    """A random DINOv2 with its own image processor, saved like a hub checkpoint."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(intermediate_size=spec["hidden_size"] * 4, **spec))
    model.save_pretrained(out)
    size = spec["image_size"]
    BitImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(out)
    return out


def preset_overrides(preset: dict, work: Path, data: Path, arm: str, teacher: Path, cache: Path) -> list[str]:
    model = [f"model.{key}={value}" for key, value in preset["model"].items()]
    common = [
        f"output_dir={work / arm}", f"data.path={data / 'train.json'}", f"model.tiny_dir={work / 'student'}",
        "train.finetune_mode=full", f"train.per_device_train_batch_size={preset['batch_size']}",
        "train.report_to=[]", "train.learning_rate=1e-4", "train.projector_lr=1e-4", "train.warmup_ratio=0",
        "train.lr_scheduler_type=constant", "data.model_max_length=1024", *model,
        f"align.projector_dim={preset['projector_dim']}", f"align.target_layers={preset['target_layers']}",
    ]
    if arm == "baseline":
        return common + ["align.vra_loss=false"]
    extra = [f"align.teacher_cache={cache}"] if arm == "teacher_cache" else []
    return common + ["align.vra_loss=true", f"align.vra_target={teacher}", *extra]


def reference_loss(trainer, batch: dict) -> torch.Tensor:
    """The reference implementation's loss, rebuilt: all hidden states, a loop over samples, teacher inline."""
    model = trainer.model
    head, teacher = model.alignment_head, trainer.teacher
    pixels = batch["pixel_values"]  # [B_img, 3, H, W], normalised for the student (CLIP)
    with torch.no_grad():
        size = (teacher.input_size, teacher.input_size)
        targets = teacher(F.interpolate(pixels, size=size, mode="bicubic", align_corners=False))  # [B_img, N, z]
    out = model.mllm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                     pixel_values=pixels, output_hidden_states=True)
    losses = []
    for k, layer in enumerate(head.target_layers):
        projector = head.projectors[k if len(head.projectors) > 1 else 0]
        image_row = 0
        for row in range(batch["input_ids"].shape[0]):
            mask = batch["input_ids"][row] == model.image_token_id  # [T]
            if not mask.any():
                continue
            predicted = projector(out.hidden_states[layer][row][mask])  # [N, z]
            losses.append(-F.cosine_similarity(predicted, targets[image_row], dim=-1).mean())
            image_row += 1
    return out.loss + model.vra_weight * torch.stack(losses).mean()


class Arm:
    """One trainer and its data iterator; `step()` is one full training step."""

    def __init__(self, name: str, trainer, steps: int):
        self.name, self.trainer = name, trainer
        trainer.create_optimizer_and_scheduler(num_training_steps=steps)
        if name == "reference":  # the reference feeds the teacher from the student's pixels
            trainer.train_dataset.teacher_inputs = None
        self.loader = trainer.get_train_dataloader()
        self.iterator = iter(self.loader)
        self.times: list[float] = []

    def next_batch(self) -> dict:
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            return next(self.iterator)

    def step(self) -> None:
        trainer, model = self.trainer, self.trainer.model
        batch = self.next_batch()
        model.train()
        if self.name == "reference":
            loss = reference_loss(trainer, batch)
        else:
            loss = trainer.compute_loss(model, batch)
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    def resident_bytes(self) -> int:
        """Bytes of the tensors the arm keeps between steps (storages counted once)."""
        tensors = list(self.trainer.model.parameters()) + list(self.trainer.model.buffers())
        tensors += [p.grad for p in self.trainer.model.parameters() if p.grad is not None]
        for state in self.trainer.optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
        if self.trainer.teacher is not None:
            tensors += list(self.trainer.teacher.parameters())
            model = getattr(self.trainer.teacher, "model", None)
            tensors += list(model.buffers()) if model is not None else []
        storages = {}
        for tensor in tensors:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())

    def step_peak_bytes(self) -> int:
        """Highest allocator level above the step's start during one step (torch.profiler memory events)."""
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            self.step()
        events = []

        def walk(node):
            if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
                events.append((node.start_time_ns, node.extra_fields.alloc_size))
            for child in node.children:
                walk(child)

        for root in prof.profiler.kineto_results.experimental_event_tree():
            walk(root)
        level = peak = 0
        for _, size in sorted(events):
            level += size
            peak = max(peak, level)
        return peak


def flop_lower_bound(baseline: Arm, aligned: Arm) -> dict:
    """FLOPs of one baseline step (forward + backward) and of the alignment head on that batch's image tokens.

    Counted separately because FlopCounterMode's per-module split attributes backward ops to whichever module
    ran last (the head would be charged for the LLM's backward): the model's count is a whole baseline step,
    the head's is the head alone on states of the step's shape, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    trainer, model = baseline.trainer, baseline.trainer.model
    batch = baseline.next_batch()
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.compute_loss(model, batch).backward()
    model.zero_grad(set_to_none=True)
    model_flops = counter.get_total_flops()
    head = aligned.trainer.model.alignment_head
    image_tokens = (batch["input_ids"] == aligned.trainer.model.image_token_id).sum(dim=1)  # [B]
    rows, tokens = int((image_tokens > 0).sum()), int(image_tokens.max())
    hidden = head.config["hidden_size"]
    states = {layer: torch.randn(rows, tokens, hidden, requires_grad=True) for layer in head.target_layers}
    counter = FlopCounterMode(display=False)
    with counter:
        sum(out.float().square().mean() for out in head(states).values()).backward()
    head.zero_grad(set_to_none=True)
    head_flops = counter.get_total_flops()
    return {"model_flops": int(model_flops), "head_flops": int(head_flops),
            "flop_lower_bound_ratio": (model_flops + head_flops) / model_flops}


def run_preset(name: str, preset: dict, steps: int, warmup: int, work: Path, arm_names: list[str] = ARMS,
               log=print) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    data = generate(work / "data", seed=0, n_train=preset["images"], n_eval=0, size=preset["model"]["image_size"],
                    progress=False)
    teacher = build_teacher_folder(work / "teacher", preset["teacher"])
    cache = work / "teacher_cache"

    def config(arm):
        return load_config(None, preset_overrides(preset, work, data, arm, teacher, cache))

    started = time.perf_counter()
    summary = build_teacher_cache(config("live_teacher"), cache, progress=False)
    log(f"[{name}] teacher cache: {summary['computed']} images at {summary['images_per_second']:.1f} images/s")
    arms = {}
    for arm in arm_names:
        trainer, _ = build_trainer(config("reference" if arm == "reference" else arm))
        arms[arm] = Arm(arm, trainer, steps + warmup + 2)
    log(f"[{name}] built {len(arms)} arms in {time.perf_counter() - started:.1f}s; {warmup} warm-up + {steps} "
        f"timed rounds")
    for round_index in range(warmup + steps):
        shift = round_index % len(arm_names)
        for arm in arm_names[shift:] + arm_names[:shift]:
            start = time.perf_counter()
            arms[arm].step()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                arms[arm].times.append(elapsed)
    memory = {arm: arms[arm].resident_bytes() + arms[arm].step_peak_bytes() for arm in arm_names}
    aligned = next(arms[arm] for arm in arm_names if arm != "baseline")
    flops = flop_lower_bound(arms["baseline"], aligned)
    head = aligned.trainer.model.alignment_head
    head_state = 4 * sum(p.numel() * p.element_size() for p in head.parameters())  # weights, grads, 2 Adam moments
    base_time = statistics.median(arms["baseline"].times)
    result = {"preset": name, "steps": steps, "warmup": warmup, "batch_size": preset["batch_size"],
              "model": preset["model"], "teacher": preset["teacher"], "projector_dim": preset["projector_dim"],
              "arms": {}, **flops, "mem_lower_bound_ratio": (memory["baseline"] + head_state) / memory["baseline"]}
    for arm in arm_names:
        median = statistics.median(arms[arm].times)
        quartiles = statistics.quantiles(arms[arm].times, n=4) if len(arms[arm].times) > 1 else [median] * 3
        paired = statistics.median(t / b for t, b in zip(arms[arm].times, arms["baseline"].times))
        result["arms"][arm] = {
            "step_s_median": median, "step_s_iqr": [quartiles[0], quartiles[2]], "peak_mem_bytes": memory[arm],
            "step_ratio_to_baseline": median / base_time, "step_ratio_paired_median": paired,
            "mem_ratio_to_baseline": memory[arm] / memory["baseline"],
        }
    arms.clear()
    gc.collect()
    return result


def format_table(result: dict) -> str:
    model, teacher = result["model"], result["teacher"]
    grid = model["image_size"] // model["patch_size"]
    lines = [
        f"preset {result['preset']}: LLM {model['hidden_size']}x{model['num_layers']}, vision "
        f"{model['vision_hidden_size']}x{model['vision_layers']} @{model['image_size']}px -> {grid}x{grid} tokens, "
        f"teacher DINOv2 {teacher['hidden_size']}x{teacher['num_hidden_layers']} @{teacher['image_size']}px, "
        f"projector_dim {result['projector_dim']}, batch {result['batch_size']}, "
        f"{result['steps']} timed rounds after {result['warmup']} warm-up, interleaved",
        f"{'arm':<26}{'step s (median)':>16}{'IQR':>18}{'x base':>8}{'paired':>8}{'peak MiB':>10}{'x base':>8}",
    ]
    for arm in result["arms"]:
        row = result["arms"][arm]
        low, high = row["step_s_iqr"]
        lines.append(f"{ARM_TITLES[arm]:<26}{row['step_s_median']:>16.4f}{f'{low:.4f}-{high:.4f}':>18}"
                     f"{row['step_ratio_to_baseline']:>8.3f}{row['step_ratio_paired_median']:>8.3f}"
                     f"{row['peak_mem_bytes'] / 2**20:>10.1f}"
                     f"{row['mem_ratio_to_baseline']:>8.3f}")
    arms = result["arms"]
    share = result["head_flops"] / result["model_flops"] if result["model_flops"] else float("nan")
    lines.append(f"FLOP lower bound for arms 2-4 (alignment head / model, fwd+bwd): "
                 f"{result['flop_lower_bound_ratio']:.4f}x ({100 * share:.2f}% of {result['model_flops'] / 1e9:.2f} "
                 f"GFLOP per step)")
    lines.append(f"memory lower bound (alignment head weights, grads, Adam moments): "
                 f"{result['mem_lower_bound_ratio']:.4f}x")
    targets = []
    if "teacher_cache" in arms:
        targets.append(f"arm 3 step <= 1.02x: {'yes' if arms['teacher_cache']['step_ratio_to_baseline'] <= 1.02 else 'NO'}")
        targets.append(f"arm 3 memory <= 1.01x: {'yes' if arms['teacher_cache']['mem_ratio_to_baseline'] <= 1.01 else 'NO'}")
    if "live_teacher" in arms and "reference" in arms:
        faster = arms["live_teacher"]["step_s_median"] < arms["reference"]["step_s_median"]
        targets.append(f"arm 2 faster than arm 4: {'yes' if faster else 'NO'}")
    lines.append("targets: " + "; ".join(targets))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,small", help="comma-separated, of: " + ", ".join(PRESETS))
    parser.add_argument("--steps", type=int, default=None,
                        help="timed rounds, one step of every arm each (default: 80 tiny, 20 small)")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of: " + ", ".join(ARMS)
                        + " (baseline always runs)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--work", default=None, help="folder for data, models and the cache (default: a temp dir)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the table as JSON")
    parser.add_argument("--smoke", action="store_true", help="two steps per arm on the tiny preset, no warm-up")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["tiny"] if args.smoke else [n.strip() for n in args.presets.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    arm_names = ["baseline"] + [a for a in ARMS[1:] if a in args.arms.split(",")]
    if len(arm_names) < 2:
        parser.error(f"--arms needs at least one of {ARMS[1:]}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = {}
    with tempfile.TemporaryDirectory(prefix="viral-bench-") as tmp:
        work = Path(args.work or tmp)
        for name in names:
            preset = dict(PRESETS[name])
            if args.smoke:
                preset.update(batch_size=2, images=8)
            steps, warmup = (2, 0) if args.smoke else (args.steps or preset["rounds"], args.warmup)
            results[name] = run_preset(name, preset, steps, warmup, work / name, arm_names)
            print(format_table(results[name]), flush=True)
            print(flush=True)
    output = {"torch_threads": torch.get_num_threads(), "presets": results}
    if args.json:
        Path(args.json).write_text(json.dumps(output, indent=2))
    return output


if __name__ == "__main__":
    main()
