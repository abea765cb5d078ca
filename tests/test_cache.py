"""The teacher-feature cache: `viral cache-teacher` writes what the live teacher would give, resumes, and a
training run reads it (same targets as the live teacher) after checking it matches the run."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import train_overrides
from viral.align.cache import MANIFEST_NAME, TeacherCache, TeacherCacheError
from viral.align.teachers import build_teacher
from viral.cli import main
from viral.config import ConfigError, load_config
from viral.data.images import apply_aspect, load_image
from viral.train import build_trainer


def overrides(out, shapes_dir, tiny_dir, teacher, *extra):
    return train_overrides(out, shapes_dir, "align.vra_loss=true", f"align.vra_target={teacher}",
                           "align.target_layers=[2]", f"model.tiny_dir={tiny_dir}", *extra)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache_student") / "model"


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory, shapes_dir, tiny_dinov2_path, tiny_dir):
    """A cache of the tiny DINOv2 teacher over the ShapesWorld training images, written by the CLI."""
    out = tmp_path_factory.mktemp("cache") / "dinov2"
    run = tmp_path_factory.mktemp("cache_run")
    assert main(["cache-teacher", "--out", str(out), "--batch-size", "8", "--shard-size", "20", "--no-progress",
                 "--set", *overrides(run, shapes_dir, tiny_dir, tiny_dinov2_path)]) == 0
    return out


def test_cache_holds_the_live_teachers_features_with_a_full_manifest(built_cache, shapes_dir, tiny_dinov2_path):
    records = json.loads((Path(shapes_dir) / "train.json").read_text())
    images = sorted({r["image"] for r in records if r.get("image")})
    cache = TeacherCache(built_cache)
    assert sorted(cache.index) == images and len(list(built_cache.glob("shard-*.safetensors"))) == 3
    manifest = json.loads((built_cache / MANIFEST_NAME).read_text())
    assert manifest["teacher"] == tiny_dinov2_path and manifest["dtype"] == "float16"
    assert manifest["grid"] == [8, 8] and manifest["teacher_grid"] == [4, 4] and manifest["input_size"] == 56
    assert manifest["z_dim"] == 48 and len(manifest["weights_sha256"]) == 64 and manifest["image_aspect"] == "pad"
    teacher = build_teacher(tiny_dinov2_path, (8, 8))
    from transformers import CLIPImageProcessor  # the student's processor pads with its mean colour

    student_processor = CLIPImageProcessor()
    for key in images[:3]:
        image = apply_aspect(load_image(Path(shapes_dir) / key), "pad", student_processor)
        live = teacher.features([image])[0]  # [64, 48]
        cached = cache.features(key)
        assert cached.dtype == torch.float16 and cached.shape == (64, 48)
        torch.testing.assert_close(cached.float(), live, atol=2e-3, rtol=2e-3)


def test_rerun_computes_only_what_is_missing(built_cache, tmp_path, shapes_dir, tiny_dinov2_path, tiny_dir):
    out = tmp_path / "resumed"
    shutil.copytree(built_cache, out)
    shards = sorted(out.glob("shard-*.safetensors"))
    lost = len(TeacherCache(out).index) - 40  # the last shard holds the rest after two shards of 20
    shards[-1].unlink()  # as if the run was killed while writing it
    (out / ".shard-000002.safetensors.tmp").write_bytes(b"partial")
    from viral.align.cache import build_teacher_cache

    config = load_config(None, overrides(tmp_path / "run", shapes_dir, tiny_dir, tiny_dinov2_path))
    summary = build_teacher_cache(config, out, batch_size=8, shard_size=20, progress=False)
    assert summary["computed"] == lost and summary["already_cached"] == 40
    assert not list(out.glob(".*.tmp"))
    again = build_teacher_cache(config, out, batch_size=8, shard_size=20, progress=False)
    assert again["computed"] == 0 and len(TeacherCache(out)) == summary["images"]


def test_training_reads_the_cache_and_gets_the_live_targets(built_cache, tmp_path, shapes_dir, tiny_dinov2_path,
                                                             tiny_dir):
    live_config = load_config(None, overrides(tmp_path / "live", shapes_dir, tiny_dir, tiny_dinov2_path))
    cached_config = load_config(None, overrides(tmp_path / "cached", shapes_dir, tiny_dir, tiny_dinov2_path,
                                                f"align.teacher_cache={built_cache}"))
    live_trainer, _ = build_trainer(live_config)
    trainer, parts = build_trainer(cached_config)
    assert parts["teacher"] is None and trainer.teacher is None and parts["teacher_cache"] is not None
    items = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(items)
    assert "teacher_pixel_values" not in batch and batch["teacher_features"].shape == (4, 64, 48)
    live_batch = live_trainer.data_collator([live_trainer.train_dataset[i] for i in range(4)])
    trainer.model.eval()
    live_trainer.model.eval()
    with torch.no_grad():
        _, cached_out = trainer.compute_loss(trainer.model, batch, return_outputs=True)
        _, live_out = live_trainer.compute_loss(live_trainer.model, live_batch, return_outputs=True)
    torch.testing.assert_close(cached_out["vra_sum"], live_out["vra_sum"], atol=4e-3, rtol=0)  # 4 images
    assert cached_out["vra_count"] == live_out["vra_count"] == 4
    torch.testing.assert_close(cached_out["lm_sum"], live_out["lm_sum"])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    assert parts["head"].projectors[0][0].weight.grad is not None


def test_a_cache_of_another_teacher_or_student_is_refused_naming_the_fields(built_cache, tmp_path, shapes_dir,
                                                                            tiny_teachers, tiny_dir):
    other_teacher = load_config(None, overrides(tmp_path / "a", shapes_dir, tiny_dir, tiny_teachers["clip"]["spec"],
                                                f"align.teacher_cache={built_cache}"))
    with pytest.raises(TeacherCacheError) as info:
        build_trainer(other_teacher)
    message = str(info.value)
    assert "weights_sha256" in message and "family: cache has 'dinov2'" in message and "z_dim" in message
    other_student = load_config(None, train_overrides(
        tmp_path / "b", shapes_dir, "align.vra_loss=true", f"align.vra_target={json.loads((built_cache / MANIFEST_NAME).read_text())['teacher']}",
        "align.target_layers=[2]", "model.image_size=32", f"align.teacher_cache={built_cache}"))
    with pytest.raises(TeacherCacheError, match=r"grid: cache has \[8, 8\], the run needs \[4, 4\]"):
        build_trainer(other_student)


def test_an_image_without_cached_features_is_named(built_cache, tmp_path, shapes_dir, tiny_dinov2_path, tiny_dir):
    records = json.loads((Path(shapes_dir) / "train.json").read_text())
    extra = dict(records[0], image="new_image.png")
    folder = tmp_path / "data"  # the cached images plus one new image
    folder.mkdir()
    (folder / "images").symlink_to(Path(shapes_dir) / "images")
    shutil.copy(Path(shapes_dir) / records[0]["image"], folder / "new_image.png")
    data = folder / "train.json"
    data.write_text(json.dumps(records + [extra]))
    config = load_config(None, overrides(tmp_path / "run", shapes_dir, tiny_dir, tiny_dinov2_path,
                                         f"align.teacher_cache={built_cache}", f"data.path={data}"))
    with pytest.raises(TeacherCacheError, match=r"no features for 1 training image\(s\): 'new_image.png'"):
        build_trainer(config)
    with pytest.raises(TeacherCacheError, match="no features for image 'nope.png'"):
        TeacherCache(built_cache).features("nope.png")


def test_cache_errors_for_the_encoder_target_and_a_folder_that_is_no_cache(tmp_path, shapes_dir, tiny_dir):
    config = load_config(None, overrides(tmp_path / "run", shapes_dir, tiny_dir, "encoder",
                                         f"align.teacher_cache={tmp_path}"))
    with pytest.raises(ConfigError, match="student's own encoder"):
        build_trainer(config)
    with pytest.raises(TeacherCacheError, match="not a teacher cache"):
        TeacherCache(tmp_path)


def test_cache_reads_a_llava_students_grid_and_processor_without_its_weights(tiny_llava_path):
    from viral.align.cache import student_image_setup

    config = load_config(None, ["model.preset=llava", f"model.model_path={tiny_llava_path}"])
    processor, grid = student_image_setup(config)
    assert grid == (8, 8) and len(processor.image_mean) == 3
