"""Qwen2-VL and Qwen2.5-VL trained with VIRAL: tiny random models of each family built from configs, saved and
loaded back through `from_pretrained`; a different image-token grid per image everywhere."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import TINY_CORPUS
from eval_fixtures import write_shapes
from viral.align.capture import LayerCapture
from viral.config import ConfigError, ModelConfig, load_config
from viral.families import get_family
from viral.families.qwen_vl import PerImageGridTeacher
from viral.train import METRICS_NAME, preflight, train

FAMILIES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
TINY = ModelConfig(hidden_size=64, num_layers=2, vision_hidden_size=32, vision_layers=2, patch_size=8, image_size=64)
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SIZES = [(64, 32), (32, 64), (48, 48)]  # (width, height): image-token grids 2x4, 4x2 and 3x3


@pytest.fixture(scope="module", params=list(FAMILIES))
def tiny_qwen(request, tmp_path_factory):
    """(family name, folder holding a tiny random model of that family and its processor)."""
    out = tmp_path_factory.mktemp(request.param)
    get_family(request.param).build_tiny(TINY_CORPUS + ["What colour is the image ? " + " ".join(COLOURS)], TINY, out)
    return request.param, str(out)


def write_colour_data(root: Path, n: int = 24) -> Path:
    """LLaVA records whose answer is the colour of a plain image; images of three sizes."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        name = list(COLOURS)[i % len(COLOURS)]
        path = f"images/{i}.png"
        Image.new("RGB", SIZES[i % len(SIZES)], COLOURS[name]).save(root / path)
        records.append({"id": str(i), "image": path, "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the image ?"}, {"from": "gpt", "value": name}]})
    (root / "train.json").write_text(json.dumps(records))
    return root / "train.json"


def test_hooks_capture_exactly_the_image_tokens_on_a_grid_per_image(tiny_qwen):
    name, path = tiny_qwen
    family = get_family(name)
    model, processor = family.load(path)
    assert type(model).__name__ == FAMILIES[name]
    images = [Image.new("RGB", (64, 32), "red"), Image.new("RGB", (32, 64), "blue")]
    inputs = processor(text=["<image> What colour is the image ?", "<image> How many"], images=images)
    grids = (inputs["image_grid_thw"][:, 1:] // family.merge_size(model)).tolist()
    assert grids == [[2, 4], [4, 2]]  # (rows, cols) of merged tokens: a different grid per image
    mask = inputs["input_ids"] == model.config.image_token_id  # [B, T]
    assert mask.sum(dim=1).tolist() == [8, 8]
    layers = [0, 1, 2]
    capture = LayerCapture(model, layers, ragged=True)
    capture.arm(mask)
    with torch.no_grad():
        reference = model(**inputs, output_hidden_states=True).hidden_states
    states = capture.collect()
    capture.remove()
    for layer in layers:
        torch.testing.assert_close(states[layer], reference[layer][mask])  # [sum N_i, D], same order
    # the merged tokens are in raster order over each image's grid: M-RoPE gives token k (row k // cols, col k % cols)
    position_ids, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                                 image_grid_thw=inputs["image_grid_thw"],
                                                 attention_mask=inputs["attention_mask"])  # [3, B, T]
    for sample, (rows, cols) in enumerate(grids):
        heights, widths = position_ids[1, sample][mask[sample]], position_ids[2, sample][mask[sample]]
        k = torch.arange(rows * cols)
        assert torch.equal(heights - heights[0], k // cols) and torch.equal(widths - widths[0], k % cols)


def test_teacher_targets_are_resampled_to_each_images_grid(tiny_dinov2_path):
    from viral.align.teachers import build_teacher, resample_grid

    teacher = PerImageGridTeacher(build_teacher(tiny_dinov2_path, (1, 1)))
    assert teacher.grid == (4, 4) and teacher.z_dim == 48
    images = [Image.new("RGB", (64, 32), "red"), Image.new("RGB", (32, 64), "blue")]
    pixels = teacher.inputs(images)["teacher_pixel_values"]
    packed = teacher(pixels, student_grid=torch.tensor([[2, 4], [4, 4]]))
    assert packed.shape == (2 * 4 + 4 * 4, 48)
    native = teacher.teacher(pixels)  # [2, 16, 48] on the teacher's own 4x4 grid
    torch.testing.assert_close(packed[:8], resample_grid(native[:1], (4, 4), (2, 4))[0])
    torch.testing.assert_close(packed[8:], native[1])  # the teacher's own grid: unchanged, same raster order


def train_config(out: Path, model_path: str, data: Path, teacher: str, *extra):
    name = json.loads((Path(model_path) / "config.json").read_text())["model_type"]
    return load_config(None, [
        f"output_dir={out}", f"model.preset={name}", f"model.model_path={model_path}", f"data.path={data}",
        "data.image_aspect=square", "align.vra_loss=true", f"align.vra_target={teacher}", "align.target_layers=[1]",
        "align.projector_dim=32", "train.max_steps=12", "train.per_device_train_batch_size=6", "train.logging_steps=1",
        "train.save_steps=1000", "train.report_to=[]", "train.learning_rate=3e-3", "train.projector_lr=3e-3",
        "train.lr_scheduler_type=constant", "train.lora_r=4", "train.lora_alpha=8", "train.warmup_ratio=0", *extra])


@pytest.fixture(scope="module")
def trained_qwen(tiny_qwen, tiny_dinov2_path, tmp_path_factory):
    """A short VIRAL run on each family: (family name, run folder)."""
    name, path = tiny_qwen
    root = tmp_path_factory.mktemp(f"run_{name}")
    data = write_colour_data(root / "data")
    return name, train(train_config(root / "run", path, data, tiny_dinov2_path))


def test_viral_training_lowers_both_losses(trained_qwen):
    _, run = trained_qwen
    rows = [json.loads(line) for line in (run / METRICS_NAME).read_text().splitlines()]
    assert len(rows) == 12 and all(r["loss_vra"] is not None and r["loss_lm"] is not None for r in rows)
    first = {key: sum(r[key] for r in rows[:3]) / 3 for key in ("loss_lm", "loss_vra")}
    last = {key: sum(r[key] for r in rows[-3:]) / 3 for key in ("loss_lm", "loss_vra")}
    assert last["loss_vra"] < first["loss_vra"] - 0.05, (first, last)
    assert last["loss_lm"] < first["loss_lm"] - 0.5, (first, last)


def test_exported_checkpoint_loads_with_plain_transformers(trained_qwen):
    name, run = trained_qwen
    code = (f"import sys, torch, transformers; m = transformers.{FAMILIES[name]}.from_pretrained({str(run)!r}); "
            "assert not any(k.startswith('viral') for k in sys.modules); "
            "assert not any('lora_' in n for n, _ in m.named_parameters()); print(type(m).__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == FAMILIES[name]
    assert (run / "alignment_head.safetensors").is_file()
    processor_class = json.loads((run / "processor_config.json").read_text())["processor_class"]
    assert processor_class == {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}[name]


def test_viral_eval_runs_on_the_exported_checkpoint(trained_qwen, tmp_path, capsys):
    from viral.cli import main

    _, run = trained_qwen
    data = write_shapes(tmp_path / "data", [{"type": "colour", "answer": "red"}, {"type": "count", "answer": "2"},
                                            {"type": "existence", "answer": "no"}])
    output = tmp_path / "results.json"
    assert main(["eval", "--model-path", str(run), "--benchmark", "shapes", "--data", str(data), "--output",
                 str(output), "--batch-size", "2", "--max-new-tokens", "2", "--no-progress"]) == 0
    summary = json.loads(output.read_text())
    assert summary["counts"]["evaluated"] == 3 and isinstance(summary["headline"]["value"], float)
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 3 and all(isinstance(p["output"], str) for p in predictions)


@pytest.mark.parametrize("extra, message", [
    (["align.vra_target=encoder"], "use a VFM teacher"),
    (["align.teacher_cache=/nonexistent"], "its own grid"),
])
def test_unsupported_alignment_settings_are_refused_before_loading(tiny_qwen, tmp_path, extra, message):
    _, path = tiny_qwen
    data = write_colour_data(tmp_path / "data", n=3)
    with pytest.raises(ConfigError, match=message):
        preflight(train_config(tmp_path / "run", path, data, "dinov2-vit-b", *extra))


def test_qwen25_vl_7b_config_names_the_checkpoint_layer_and_launch_command():
    path = Path(__file__).parent.parent / "configs" / "qwen2.5-vl-7b-viral.yaml"
    config = load_config(path)
    assert (config.model.preset, config.model.model_path) == ("qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct")
    assert config.align.target_layers == [16] and config.align.vra_loss and config.train.bf16
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    command = next(line for line in header if "torchrun" in line)
    assert "-m viral.cli train configs/qwen2.5-vl-7b-viral.yaml" in command
    assert any("train.deepspeed=configs/deepspeed-zero2.json" in line for line in header)
    assert (path.parent / "deepspeed-zero2.json").is_file()


def test_a_llava_onevision_checkpoint_is_refused_with_the_reason(tmp_path):
    from viral.model import load_llava

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_onevision"}))
    with pytest.raises(ConfigError, match="'llava_onevision'.*LLaVA-OneVision"):
        load_llava(tmp_path)


def test_the_pixel_budget_sets_the_image_token_grid(tiny_qwen):
    name, path = tiny_qwen
    image = Image.new("RGB", (64, 64), "red")
    _, processor = get_family(name).load(path, max_pixels=32 * 32)
    assert processor.image_processor(images=image, return_tensors="pt")["image_grid_thw"].tolist() == [[1, 4, 4]]
    _, processor = get_family(name).load(path)  # the saved budget: 64 x 64 pixels
    assert processor.image_processor(images=image, return_tensors="pt")["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_lora_the_merger_and_the_alignment_head_train_the_rest_of_the_tower_is_frozen(tiny_qwen, tiny_dinov2_path,
                                                                                        tmp_path):
    from viral.train import build_trainer

    _, path = tiny_qwen
    data = write_colour_data(tmp_path / "data", n=6)
    trainer, parts = build_trainer(train_config(tmp_path / "run", path, data, tiny_dinov2_path,
                                                "train.projector_lr=1e-5"))
    model = parts["llava"]
    trainable = {name for name, p in parts["mllm"].named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or ".visual.merger." in name for name in trainable)
    assert all("language_model" in name for name in trainable if "lora_" in name)
    assert all(p.requires_grad for p in model.model.visual.merger.parameters())
    tower = [p for name, p in model.model.visual.named_parameters() if not name.startswith("merger.")]
    assert tower and not any(p.requires_grad for p in tower)
    trainer.create_optimizer()
    merger = {id(p) for p in model.model.visual.merger.parameters()}
    lrs = {group["lr"] for group in trainer.optimizer.param_groups if any(id(p) in merger for p in group["params"])}
    assert lrs == {1e-5}
    assert all(p.requires_grad for p in parts["head"].parameters())
