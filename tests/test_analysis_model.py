"""The analyses on a tiny random LLaVA: hooks read the right states, attention maps and entropies, PCA
maps, patch shuffling, and each `viral analyze` command writing its JSON and PNG."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from PIL import Image, ImageDraw

from viral.analysis import attention, pca, shuffle
from viral.analysis.report import Example, load_examples
from viral.analysis.states import decoder_layers, image_states
from viral.infer import Predictor

QUESTIONS = ["How many red circles are there ?", "Is there a yellow circle ?", "What colour is the triangle ?"]


def _picture(seed: int) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    for colour in ("red", "blue", "green"):
        x, y = torch.randint(0, 44, (2,), generator=generator).tolist()
        draw.ellipse((x, y, x + 18, y + 18), fill=colour)
    return image


@pytest.fixture(scope="module")
def predictor(tiny_llava_path):
    return Predictor.from_pretrained(tiny_llava_path, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def examples():
    return [Example(_picture(i), QUESTIONS[i % 3], answer="yes", id=str(i)) for i in range(4)]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, examples):
    folder = tmp_path_factory.mktemp("analysis_data")
    (folder / "images").mkdir()
    lines = []
    for i, example in enumerate(examples):
        example.image.save(folder / "images" / f"{i}.png")
        record = {"question_id": i, "image": f"images/{i}.png", "question": example.question,
                  "answer": "yes" if i % 2 else "2", "type": "existence" if i % 2 else "count"}
        lines.append(json.dumps(record))
    (folder / "eval.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "eval.jsonl"


def test_layer_states_follow_the_layer_numbering(predictor, examples):
    model = predictor.model
    inputs = predictor.prepare([e.image for e in examples[:2]], [e.question for e in examples[:2]])
    num_layers = len(decoder_layers(model))
    states = image_states(model, inputs, range(num_layers + 1))
    assert not any(block._forward_hooks or block._forward_pre_hooks for block in decoder_layers(model))
    mask = inputs["input_ids"] == model.config.image_token_id
    with torch.no_grad():
        reference = model(**inputs, output_hidden_states=True).hidden_states  # test-only cross-check
        projected = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    assert states[0].shape == (2, 64, model.config.text_config.hidden_size)
    assert torch.allclose(states[0], torch.stack(list(projected)), atol=1e-5)
    for layer in range(num_layers + 1):  # L: after the final norm, like transformers' hidden_states
        assert torch.allclose(states[layer], reference[layer][mask].reshape(2, 64, -1), atol=1e-5), layer
    assert states["encoder"].shape == (2, 64, model.config.vision_config.hidden_size)


def test_attention_maps_sum_to_the_attention_mass_on_image_tokens(tiny_llava_path, examples):
    eager = Predictor.from_pretrained(tiny_llava_path, device="cpu", dtype="float32")
    attention.use_eager_attention(eager.model)
    inputs = eager.prepare([e.image for e in examples[:2]], [e.question for e in examples[:2]])
    maps = attention.text_to_image_attention(eager.model, inputs)  # [B, L, H, rows, cols]
    assert maps.shape == (2, 4, 4, 8, 8)
    mask = inputs["input_ids"] == eager.model.config.image_token_id
    with torch.no_grad():
        weights = eager.model(**inputs, output_attentions=True).attentions  # test-only cross-check
    for layer, w in enumerate(weights):
        mass = (w[:, :, -1, :] * mask[:, None, :]).sum(-1)  # [B, H]
        assert torch.allclose(maps[:, layer].sum(dim=(-1, -2)), mass, atol=1e-6)
    assert (maps.sum(dim=(-1, -2)) < 1.0 + 1e-6).all()


def test_attention_needs_eager_weights(predictor, examples):
    inputs = predictor.prepare([examples[0].image], [examples[0].question])
    with pytest.raises(RuntimeError, match="eager"):
        attention.text_to_image_attention(predictor.model, inputs)


def test_spatial_entropy_of_uniform_and_peaked_maps():
    uniform = torch.full((3, 24, 24), 0.37)
    assert torch.allclose(attention.spatial_entropy(uniform), torch.full((3,), math.log(24 * 24), dtype=torch.float64))
    peaked = torch.zeros(8, 8)
    peaked[2, 5] = 0.4
    assert attention.spatial_entropy(peaked).item() == pytest.approx(0.0, abs=1e-12)
    two_blobs = torch.zeros(8, 8)
    two_blobs[0:2, 0:2] = 1.0
    two_blobs[5:7, 5:7] = 1.0
    assert attention.component_entropy(two_blobs) == pytest.approx(math.log(2))
    assert attention.component_entropy(peaked) == 0.0


def test_pca_map_finds_the_dominant_direction():
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(32, generator=generator)
    left_right = torch.tensor([1.0 if i % 8 < 4 else -1.0 for i in range(64)])
    states = left_right[:, None] * direction + 0.01 * torch.randn(64, 32, generator=generator)  # [N, D]
    rgb, ratio = pca.pca_rgb(states)
    assert rgb.shape == (64, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert ratio[0] > 0.95 and ratio == sorted(ratio, reverse=True)
    red = rgb[:, 0].reshape(8, 8)
    assert torch.allclose(red[:, :4], red[:, :1].expand(8, 4), atol=0.05)  # halves get two colours
    assert (red[:, :4].mean() - red[:, 4:].mean()).abs() > 0.9


def test_pca_maps_on_the_model(predictor, examples):
    maps = pca.pca_maps(predictor, examples[0].image, examples[0].question, [0, 2])
    assert set(maps) == {0, 2}
    assert maps[2]["rgb"].shape == (8, 8, 3)
    with pytest.raises(ValueError, match="out of range"):
        pca.pca_maps(predictor, examples[0].image, "x", [9])


def test_identity_permutation_reproduces_the_unshuffled_run_exactly(tmp_path, predictor, examples):
    from viral.evaluate.parsing import parse_short_answer

    images, prompts = [e.image for e in examples], [e.question for e in examples]
    inputs = predictor.prepare(images, prompts)
    with torch.no_grad():
        logits = predictor.model(**inputs).logits
        with shuffle.permuted_image_tokens(predictor.model, "identity"):
            identity_logits = predictor.model(**inputs).logits
        with shuffle.permuted_image_tokens(predictor.model, "random", seed=3):
            shuffled_logits = predictor.model(**inputs).logits
    assert torch.equal(logits, identity_logits)
    assert not torch.allclose(logits, shuffled_logits)

    # a ShapesBench file whose gold answers are the model's own answers for half of the questions
    outputs = predictor.generate(images, prompts, max_new_tokens=16)
    (tmp_path / "images").mkdir()
    lines = []
    for i, (example, output) in enumerate(zip(examples, outputs)):
        example.image.save(tmp_path / "images" / f"{i}.png")
        own = parse_short_answer(output)
        answer = own if (i % 2 and own) else "purple" if own != "purple" else "orange"
        lines.append(json.dumps({"question_id": i, "image": f"images/{i}.png", "question": example.question,
                                 "answer": answer, "type": "colour"}))
    (tmp_path / "eval.jsonl").write_text("\n".join(lines) + "\n")

    result = shuffle.shuffle_accuracy(predictor, "shapes", tmp_path, permutation="identity")
    assert result["original"]["headline"]["value"] > 0
    assert result["original"]["metrics"] == result["shuffled"]["metrics"]
    assert result["drop"] == 0.0
    assert not predictor.model.model.multi_modal_projector._forward_hooks


def test_random_permutation_is_seeded(predictor, examples):
    inputs = predictor.prepare([examples[0].image], [examples[0].question])
    runs = []
    for seed in (5, 5, 6):
        with torch.no_grad(), shuffle.permuted_image_tokens(predictor.model, "random", seed=seed):
            runs.append(predictor.model(**inputs).logits)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_load_examples_names_the_bad_record(tmp_path, data_file):
    assert [e.answer for e in load_examples(data_file)] == ["2", "yes", "2", "yes"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"image": "missing.png", "question": "q"}\n')
    with pytest.raises(FileNotFoundError, match="record 0, field 'image'"):
        load_examples(broken)


def _run(argv):
    from viral.commands import analyze

    parser = argparse.ArgumentParser(prog="viral")
    analyze.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cknna_against_a_teacher_on_shapesworld(tmp_path, tiny_llava_path, shapes_dir, tiny_dinov2_path):
    assert _run(["analyze", "cknna", "--model-path", tiny_llava_path, "--device", "cpu", "--dtype", "float32",
                 "--data", str(shapes_dir / "eval.jsonl"), "--n-images", "4", "--teacher", tiny_dinov2_path,
                 "--k", "5", "--out", str(tmp_path)]) == 0
    result = next(iter(json.loads((tmp_path / "cknna.json").read_text())["results"].values()))
    assert set(result["curves"]) == {"encoder", "teacher"}
    assert result["n_images"] == 4 and len(result["curves"]["teacher"]["mean"]) == 5


def test_analyze_commands_write_json_and_png(tmp_path, tiny_llava_path, data_file):
    image = str(data_file.parent / "images" / "0.png")
    common = ["--model-path", tiny_llava_path, "--device", "cpu", "--dtype", "float32"]

    assert _run(["analyze", "cknna", *common, "--model-path", tiny_llava_path, "--data", str(data_file),
                 "--k", "5", "--out", str(tmp_path / "cknna")]) == 0
    result = json.loads((tmp_path / "cknna" / "cknna.json").read_text())["results"]
    assert len(result) == 2  # two checkpoints on one plot
    curve = next(iter(result.values()))["curves"]["encoder"]["mean"]
    assert len(curve) == 5 and all(-1 <= v <= 1 for v in curve)

    assert _run(["analyze", "attention", *common, "--image", image, "--prompt", QUESTIONS[0], "--per-head",
                 "--out", str(tmp_path / "attention")]) == 0
    report = json.loads((tmp_path / "attention" / "attention.json").read_text())["results"]
    assert len(next(iter(report.values()))["spatial_entropy"]) == 4
    assert _run(["analyze", "attention", *common, "--data", str(data_file), "--out", str(tmp_path / "att_ds")]) == 0

    assert _run(["analyze", "pca", *common, "--image", image, "--layer", "0", "--layer", "2",
                 "--out", str(tmp_path / "pca")]) == 0
    assert _run(["analyze", "shuffle", *common, "--data", str(data_file), "--benchmark", "shapes",
                 "--out", str(tmp_path / "shuffle")]) == 0
    shuffled = next(iter(json.loads((tmp_path / "shuffle" / "shuffle.json").read_text())["results"].values()))
    assert set(shuffled) >= {"original", "shuffled", "drop"}
    assert len(list((tmp_path / "shuffle").glob("*/*/predictions.jsonl"))) == 2  # original/ and shuffled/

    for name in ("cknna/cknna.png", "attention/attention.png", "attention/attention_heads.png",
                 "attention/attention_maps.npy", "att_ds/attention_entropy.png", "att_ds/attention_entropy.json",
                 "pca/pca.png", "pca/pca.json", "shuffle/shuffle.png"):
        assert (tmp_path / name).stat().st_size > 0, name

    # `viral report` reads these very files: the CKNNA and attention-entropy sections with their numbers
    from viral.report.html import build_context
    from viral.report.inputs import read_inputs

    analyses = build_context(read_inputs(tmp_path))["analyses"]
    assert [section["kind"] for section in analyses] == ["cknna", "attention"]
    assert analyses[0]["rows"][0]["values"] == curve and analyses[0]["figure"].startswith("data:image/png;base64,")
