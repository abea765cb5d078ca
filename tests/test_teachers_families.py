"""Every teacher family of the paper, each a tiny random model saved and loaded back through the registry:
the output lands on the student grid, pixels arrive with the teacher's own normalisation, SAM ignores its
padding, weights are exactly the saved ones, and the registry knows the official names."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import TEACHER_MEAN, TEACHER_STD
from viral.align.teachers import (
    TeacherLoadError,
    build_teacher,
    resample_grid,
    resample_region,
    resolve_teacher_spec,
)
from viral.config import ConfigError

FAMILIES = ["clip", "siglip", "siglip2", "sam", "depth-anything", "remote"]


@pytest.mark.parametrize("family", FAMILIES)
def test_features_land_on_the_student_grid_for_several_resolutions(tiny_teachers, family):
    info = tiny_teachers[family]
    images = [Image.new("RGB", (50, 30), "red"), Image.new("RGB", (40, 90), "blue")]
    for student_grid in [(24, 24), tuple(info["grid"]), (7, 5)]:
        teacher = build_teacher(info["spec"], student_grid)
        assert teacher.grid == info["grid"] and teacher.z_dim == info["z_dim"]
        features = teacher.features(images)
        assert features.shape == (2, student_grid[0] * student_grid[1], info["z_dim"])
        assert not features.requires_grad and torch.isfinite(features).all()
        assert not teacher.model.training
        assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_pixels_reach_the_teacher_with_its_own_normalisation(tiny_teachers, family):
    info = tiny_teachers[family]
    teacher = build_teacher(info["spec"], (4, 4))
    seen = {}
    hook = info["first_layer"](teacher).register_forward_pre_hook(
        lambda module, args: seen.setdefault("x", args[0].detach().clone()))
    colour = (51, 102, 204)
    teacher.features([Image.new("RGB", (teacher.input_size, teacher.input_size), colour)])
    hook.remove()
    raw = torch.tensor(colour) / 255.0
    if family == "remote":  # RADIO's convention: [0, 1] RGB, the model conditions its input itself
        expected = raw
    else:
        expected = (raw - torch.tensor(TEACHER_MEAN)) / torch.tensor(TEACHER_STD)
    x = seen["x"]
    if family == "siglip2":  # NaFlex: [B, patches, patch*patch*3], channels last within a patch
        assert x.shape[1] == teacher.grid[0] * teacher.grid[1]
        values = x.reshape(-1, 3)
    else:
        assert x.shape[-2:] == (teacher.input_size, teacher.input_size)
        values = x.permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(values, expected.expand_as(values), atol=1e-5, rtol=0)


def test_remote_code_buffers_are_filled_as_its_init_does(tiny_teachers):
    # transformers 5 leaves non-persistent buffers of remote code empty; the loader refills them
    teacher = build_teacher(tiny_teachers["remote"]["spec"], (4, 4))
    torch.testing.assert_close(teacher.model.input_mean.flatten(), torch.tensor([0.4, 0.5, 0.6]))


def test_remote_adapter_can_ask_for_normalised_pixels(tiny_teachers):
    spec = tiny_teachers["remote"]["spec"] + "?pixels=normalized&mean=0.5,0.5,0.5&std=0.25,0.25,0.25&size=32"
    teacher = build_teacher(spec, (4, 4))
    assert teacher.grid == (4, 4)
    pixels = teacher.preprocess([Image.new("RGB", (20, 20), (255, 0, 128))])
    torch.testing.assert_close(pixels[0, :, 3, 3], torch.tensor([2.0, -2.0, (128 / 255 - 0.5) / 0.25]))
    with pytest.raises(TeacherLoadError, match="unknown adapter option 'colour'"):
        build_teacher(tiny_teachers["remote"]["spec"] + "?colour=1", (4, 4))
    with pytest.raises(TeacherLoadError, match="output 'nothing'"):
        build_teacher(tiny_teachers["remote"]["spec"] + "?output=nothing", (4, 4))


@pytest.mark.parametrize("family", FAMILIES)
def test_loaded_weights_equal_the_saved_weights(tiny_teachers, family):
    info = tiny_teachers[family]
    teacher = build_teacher(info["spec"], (4, 4))
    reference = load_file(info["reference"])
    loaded = teacher.model.state_dict()
    assert reference.keys() == loaded.keys()
    assert all(torch.equal(reference[k], loaded[k]) for k in reference)


def test_sam_resizes_longest_side_pads_and_samples_only_the_image(tiny_teachers):
    teacher = build_teacher(tiny_teachers["sam"]["spec"], (4, 8))
    wide = Image.new("RGB", (200, 100), (10, 200, 30))  # 2:1 -> 64x32 inside a 64x64 canvas
    batch = teacher.inputs([wide])
    pixels, sizes = batch["teacher_pixel_values"], batch["teacher_image_sizes"]
    assert sizes.tolist() == [[32, 64]]
    assert torch.all(pixels[0, :, 32:] == 0) and torch.all(pixels[0, :, :32] != 0)
    features = teacher(pixels, image_sizes=sizes)  # [1, 4*8, C]
    maps = teacher.model(pixel_values=pixels).last_hidden_state  # [1, C, 8, 8]; rows 0..3 cover the image
    expected = F.interpolate(maps[:, :, :4, :], size=(4, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(features, expected.flatten(2).transpose(1, 2))
    assert maps[:, :, 4:].abs().max() > 0  # the padded rows hold features, just never sampled
    whole = teacher(pixels)  # without sizes the whole canvas (image and padding) is resampled
    assert not torch.allclose(whole, features)


def test_resample_region_of_the_whole_map_equals_resample_grid():
    maps = torch.randn(2, 5, 6, 6)
    tokens = maps.flatten(2).transpose(1, 2)
    for target in [(6, 6), (3, 3), (10, 7)]:
        whole = resample_region(maps, torch.ones(2, 2), target)
        torch.testing.assert_close(whole, resample_grid(tokens, (6, 6), target), atol=1e-5, rtol=1e-5)


def test_clip_layer_suffix_takes_that_encoder_layer(tiny_teachers):
    spec = tiny_teachers["clip"]["spec"]
    last = build_teacher(spec, (4, 4))
    first = build_teacher(spec + "@1", (4, 4))
    same_as_last = build_teacher(spec + "@-1", (4, 4))
    pixels = last.preprocess([Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "green")])
    hidden = last.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(first(pixels), hidden[1][:, 1:])
    torch.testing.assert_close(same_as_last(pixels), last(pixels))
    with pytest.raises(TeacherLoadError, match="layer 5 is out of range"):
        build_teacher(spec + "@5", (4, 4))
    with pytest.raises(ConfigError, match="layer suffix"):
        build_teacher(tiny_teachers["sam"]["spec"] + "@1", (4, 4))


def test_a_checkpoint_missing_weights_is_refused_not_reinitialised(tmp_path, tiny_dinov2_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dinov2_path, broken)
    weights = load_file(str(broken / "model.safetensors"))
    dropped = [k for k in weights if "mlp.fc1" in k]
    save_file({k: v for k, v in weights.items() if k not in dropped}, str(broken / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(TeacherLoadError, match="randomly initialised") as info:
        build_teacher(str(broken), (4, 4))
    assert "fc1" in str(info.value)


def test_registry_maps_official_and_short_names():
    assert resolve_teacher_spec("sam_vit_b_01ec64") == ("sam", "facebook/sam-vit-base")
    assert resolve_teacher_spec("depth_anything_v2_vitb") == ("depth-anything", "depth-anything/Depth-Anything-V2-Base-hf")
    assert resolve_teacher_spec("radio_v2.5-b") == ("remote", "nvidia/RADIO-B?output=1&pixels=unit")
    assert resolve_teacher_spec("c-radio_v3-b") == ("remote", "nvidia/C-RADIOv3-B?output=1&pixels=unit")
    assert resolve_teacher_spec("clip-vit-l-336@-2") == ("clip", "openai/clip-vit-large-patch14-336")
    assert resolve_teacher_spec("siglip2-so400m")[0] == "siglip2"
    assert resolve_teacher_spec("google/siglip-so400m-patch14-384") == ("siglip", "google/siglip-so400m-patch14-384")
    assert resolve_teacher_spec("openai/clip-vit-base-patch16")[0] == "clip"
    assert resolve_teacher_spec("facebook/sam-vit-huge")[0] == "sam"
    assert resolve_teacher_spec("nvidia/C-RADIOv3-L") == ("remote", "nvidia/C-RADIOv3-L?output=1&pixels=unit")
    assert resolve_teacher_spec("remote:some/model?output=0") == ("remote", "some/model?output=0")
    assert resolve_teacher_spec("clip") == ("encoder", None)  # the official configs' name for encoder alignment


def test_registry_points_remote_code_folders_at_the_remote_prefix(tiny_teachers):
    folder = tiny_teachers["remote"]["spec"].removeprefix("remote:")
    assert json.loads(open(f"{folder}/config.json").read())["auto_map"]
    with pytest.raises(ConfigError, match="use 'remote:"):
        resolve_teacher_spec(folder)
    for family in ["clip", "siglip", "siglip2", "sam", "depth-anything"]:
        assert resolve_teacher_spec(tiny_teachers[family]["spec"])[0] == family
