"""The ShapesWorld study machinery: stage-0 encoders and a two-arm mini-study on a very small world."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from viral.study.encoders import EncoderSettings, train_encoders

TINY_ENCODERS = dict(hidden_size=32, num_layers=2, num_heads=4, patch_size=8, teacher_image_size=48,
                     student_steps=3, teacher_steps=3, batch_size=8, probe_train=24, probe_test=8, probe_steps=3)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from viral.data.shapes import QUESTION_TYPES, generate

    return generate(tmp_path_factory.mktemp("world"), seed=0, n_train=24, n_eval=8, size=32, progress=False,
                    types=QUESTION_TYPES)


@pytest.fixture(scope="module")
def stage0(small_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("encoders")
    report = train_encoders(small_world, out, EncoderSettings(**TINY_ENCODERS))
    return out, report


def test_stage0_writes_loadable_encoders_and_the_teacher_loads_through_the_registry(stage0, small_world):
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPVisionModel

    from viral.align.teachers import Dinov2Teacher, build_teacher

    out, report = stage0
    student = CLIPVisionModel.from_pretrained(out / "student")
    processor = AutoImageProcessor.from_pretrained(out / "student")
    assert student.config.image_size == 32 and student.config.patch_size == 8
    image = Image.open(next((Path(small_world) / "images").glob("eval_*.png")))
    pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
    assert student(pixel_values=pixels).last_hidden_state.shape == (1, 1 + 16, 32)

    teacher = build_teacher(str(out / "teacher"), (4, 4))  # the registry path, as align.vra_target uses it
    assert isinstance(teacher, Dinov2Teacher)
    assert teacher.grid == (6, 6) and teacher.input_size == 48 and teacher.z_dim == 32  # its own 48 px, patch 8
    features = teacher(teacher.preprocess([image]))
    assert features.shape == (1, 16, 32)  # resampled to the student's 4x4 grid
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.parameters())

    for kind in ("student", "teacher"):
        assert report[kind]["curve"] and report[kind]["eval"]
        for task in ("count", "position"):
            probe = report["probes"][kind][task]
            assert all(0 <= probe[k] <= 100 for k in ("patch_attention_probe", "pooled_linear_probe", "chance"))
    diagnostics = report["diagnostics"]
    assert -1 <= diagnostics["constant_target_cosine"] <= 1 and -1 <= diagnostics["student_linear_map_cosine"] <= 1
    assert json.loads((out / "report.json").read_text())["settings"] == report["settings"]


def test_stage0_is_reused_when_settings_match(stage0, small_world):
    out, report = stage0
    before = (out / "student" / "model.safetensors").stat().st_mtime_ns
    again = train_encoders(small_world, out, EncoderSettings(**TINY_ENCODERS))
    assert again == report and (out / "student" / "model.safetensors").stat().st_mtime_ns == before


def test_other_probe_settings_rerun_the_probes_not_the_encoders(stage0, small_world, tmp_path):
    import shutil

    out, report = stage0
    copy = tmp_path / "encoders"
    shutil.copytree(out, copy)
    before = (copy / "student" / "model.safetensors").stat().st_mtime_ns
    assert set(report["probes"]["student"]) == {"count", "position"}  # the default tasks
    again = train_encoders(small_world, copy, EncoderSettings(**{**TINY_ENCODERS, "probe_steps": 4,
                                                                 "probe_tasks": ["existence", "colour"]}))
    assert (copy / "student" / "model.safetensors").stat().st_mtime_ns == before
    assert again["settings"]["probe_steps"] == 4 and again["student"] == report["student"]
    assert again["probes"]["steps"] == 4 and report["probes"]["steps"] == 3  # the probes ran again
    assert set(again["probes"]["student"]) == set(again["probes"]["teacher"]) == {"existence", "colour"}
    assert json.loads((copy / "report.json").read_text()) == again
    # a report written before a probe setting existed reads it as its default: nothing reruns
    old = json.loads((out / "report.json").read_text())
    del old["settings"]["probe_tasks"]
    (copy / "report.json").write_text(json.dumps(old))
    assert train_encoders(small_world, copy, EncoderSettings(**TINY_ENCODERS))["probes"] == report["probes"]


def test_existence_and_colour_probe_tasks_read_the_label_maps(small_world):
    from viral.data.shapes import COLOURS
    from viral.study.probes import probe_tasks
    from viral.study.world import load_split

    train, test = load_split(small_world, "train"), load_split(small_world, "eval")
    tasks = probe_tasks(train, test, ["existence", "colour"])
    images, queries, targets = tasks["existence"][0]
    for i, q, t in zip(images.tolist(), queries.tolist(), targets.tolist()):
        pairs = {((o.shape - 1) * len(COLOURS) + o.colour - 1) for o in train.objects[i]}
        assert (q in pairs) == bool(t)
    assert targets.sum() * 2 == len(targets)  # as many absent pairs as present (at most 6 of 12 present)
    images, queries, targets = tasks["colour"][0]
    for i, s, c in zip(images.tolist(), queries.tolist(), targets.tolist()):
        [only] = [o for o in train.objects[i] if o.shape == s + 1]  # asked only of shapes once in the image
        assert only.colour == c + 1
    again = probe_tasks(train, test, ["existence"])["existence"][0]  # the absent pairs are drawn the same way
    assert all(a.tolist() == b.tolist() for a, b in zip(again, tasks["existence"][0]))
    with pytest.raises(ValueError, match="unknown probe task"):
        probe_tasks(train, test, ["shape"])


def test_two_arm_mini_study(tmp_path, small_world, stage0):
    from transformers import CLIPVisionModel, LlavaForConditionalGeneration

    from viral.data.shapes import scene_words
    from viral.config import ConfigError
    from viral.evaluate.shapes import axis_group
    from viral.study.pipeline import StudySettings, run_study, stage_configs
    from viral.study.world import load_split
    from viral.train import ALIGNMENT_HEAD_NAME, build_trainer
    from viral.config import config_from_dict

    encoders, _ = stage0
    data = tmp_path / "shapes"
    data.symlink_to(small_world, target_is_directory=True)
    overrides = ["model.hidden_size=32", "model.num_layers=2", "align.target_layers=[1]", "align.projector_dim=16",
                 "train.per_device_train_batch_size=4", "train.logging_steps=1", "train.save_steps=1000",
                 "train.warmup_ratio=0"]
    settings = StudySettings(seeds=[0, 1], overrides=overrides, n_train=24, n_eval=8, image_size=32, turns=3,
                             max_objects=6, type_weights=None,
                             language_steps=2, pretrain_steps=2, finetune_steps=3, eval_batch_size=16, curve_every=2,
                             curve_questions=8)
    out = tmp_path / "study"
    summary = run_study(out, settings, EncoderSettings(**TINY_ENCODERS), data_dir=data, encoders_dir=encoders)

    written = json.loads((out / "study.json").read_text())
    assert set(written["runs"]) == {"0", "1"} and (out / "study.md").is_file() and (out / "study.png").is_file()
    # the LLM first learns the world's text, each image replaced by its scene as words on the student's 4 x 4
    # image-token raster (32-pixel images, 8-pixel patches): one run for both seeds, then each seed's stage 1
    # starts from it in the chat format
    assert written["runs"]["0"]["language"] == written["runs"]["1"]["language"]
    language_dir = Path(written["runs"]["0"]["language"]["dir"])
    assert language_dir == out / "language"
    language = yaml.safe_load((language_dir / "viral_config.yaml").read_text())
    assert language["data"]["path"] == str(data / "scene-text-4.json") and language["train"]["max_steps"] == 2
    assert language["data"]["model_max_length"] == 320 and language["model"]["seed"] == 0
    # it reads no image and trains beside the encoders: a random tower of the student's shape, which stage 1
    # replaces by the trained student
    student = CLIPVisionModel.from_pretrained(encoders / "student")
    assert language["model"]["vision_tower_path"] is None
    assert (language["model"]["image_size"], language["model"]["patch_size"]) == (32, 8)
    language_tower = LlavaForConditionalGeneration.from_pretrained(language_dir).model.vision_tower
    assert not torch.equal(language_tower.embeddings.patch_embedding.weight, student.embeddings.patch_embedding.weight)
    corpus = json.loads((data / "scene-text-4.json").read_text())
    world = load_split(data, "train")
    first = json.loads((data / "train.json").read_text())[0]
    scene = scene_words(world.labels[world.names.index(Path(first["image"]).name)], 4)
    assert corpus[0]["conversations"][0]["value"].startswith(scene + "\n") and len(scene.split()) == 16
    assert all("image" not in r and "<image>" not in r["conversations"][0]["value"] for r in corpus)
    assert len(corpus) == 2 * settings.n_train  # every training conversation and every caption
    for seed in ("0", "1"):
        runs = written["runs"][seed]
        assert set(runs) == {"language", "pretrain", "baseline", "viral"}
        pretrain = yaml.safe_load((Path(runs["pretrain"]["dir"]) / "viral_config.yaml").read_text())
        assert pretrain["model"]["preset"] == "llava" and pretrain["model"]["model_path"] == str(language_dir)
        assert pretrain["model"]["vision_tower_path"] == str(encoders / "student")
        stage1_tower = LlavaForConditionalGeneration.from_pretrained(runs["pretrain"]["dir"]).model.vision_tower
        assert all(torch.equal(stage1_tower.state_dict()[k], v) for k, v in student.state_dict().items())
        assert pretrain["data"]["template"] == "auto"
        baseline, viral = Path(runs["baseline"]["dir"]), Path(runs["viral"]["dir"])
        for run in (baseline, viral):
            assert (run / "config.json").is_file() and (run / "eval" / "shapes.json").is_file()
            assert list((run / "runs").rglob("events.out.tfevents.*"))  # TensorBoard
        # the baseline never built an alignment head: no head saved, no L_VRA logged
        assert not (baseline / ALIGNMENT_HEAD_NAME).exists() and (viral / ALIGNMENT_HEAD_NAME).exists()
        baseline_rows = [json.loads(x) for x in (baseline / "metrics.jsonl").read_text().splitlines()]
        viral_rows = [json.loads(x) for x in (viral / "metrics.jsonl").read_text().splitlines()]
        assert len(baseline_rows) == 3 and all(r["loss_vra"] is None for r in baseline_rows)
        assert all(r["loss_vra"] is not None for r in viral_rows)
        curve = [json.loads(x) for x in (viral / "eval_curve.jsonl").read_text().splitlines()]
        assert [row["step"] for row in curve] == [2] and curve[0]["questions"] == 8
        # scored per type and per axis of relation and position, as the final evaluation is
        first = [json.loads(x) for x in (data / "eval.jsonl").read_text().splitlines()][:8]
        groups = {axis_group(q["type"], q["answer"]) for q in first} - {None}
        assert groups and set(curve[0]["scores"]) == {"accuracy"} | {q["type"] for q in first} | groups
        # same initial weights (the same stage-1 checkpoint) and seed in both arms
        configs = {arm: yaml.safe_load((Path(runs[arm]["dir"]) / "viral_config.yaml").read_text()) for arm in
                   ("baseline", "viral")}
        assert configs["baseline"]["model"]["model_path"] == configs["viral"]["model"]["model_path"] == \
            runs["pretrain"]["dir"]
        assert configs["baseline"]["train"]["seed"] == configs["viral"]["train"]["seed"] == int(seed)
        assert configs["viral"]["align"]["vra_target"] == str(encoders / "teacher")
        assert not configs["baseline"]["align"]["vra_loss"] and configs["viral"]["align"]["vra_loss"]
    for name in ("accuracy", "count", "relation", "existence", "colour"):
        entry = written["statistics"]["types"][name]
        assert len(entry["baseline"]["values"]) == len(entry["viral"]["values"]) == 2
        assert {"paired_t", "sign_test", "mean_difference"} <= set(entry["paired"])
        assert set(written["mcnemar_per_seed"]["0"][name]) >= {"p_value", "questions"}
    assert summary["outputs"]["plot"].endswith("study.png")
    # relation and position per axis of the image, from each run's predictions: scores, tests and chance
    for seed in ("0", "1"):
        for arm in ("baseline", "viral"):
            rows = [json.loads(x) for x in (Path(written["runs"][seed][arm]["dir"]) / "eval" / "predictions.jsonl")
                    .read_text().splitlines()]
            expected = {}
            for row in rows:
                if axis_group(row["type"], row["answer"]):
                    expected.setdefault(axis_group(row["type"], row["answer"]), []).append(row["correct"])
            assert expected and written["runs"][seed][arm]["axes"] == {
                name: round(100.0 * sum(v) / len(v), 4) for name, v in expected.items()}
    assert set(written["statistics_by_axis"]["types"]) == set(expected) <= set(written["chance"])
    assert set(expected) <= set(written["mcnemar_per_seed"]["0"])
    assert "per axis of the image" in (out / "study.md").read_text()

    # `viral report` on the trained study: its table, training curves and every (seed, question) in the browser
    from viral.report import write_html_report

    html = write_html_report(out).read_text()
    assert all(f'id="{section}"' in html for section in ("study-table", "axis-table", "losses", "curves",
                                                         "question-table"))
    questions = sum(len((Path(written["runs"][s]["baseline"]["dir"]) / "eval" / "predictions.jsonl").read_text()
                        .splitlines()) for s in ("0", "1"))
    assert html.count('<tr data-seed="') == questions and 'data-image="i0"' in html

    # same data order in both arms: their trainers draw the same first batches
    configs = stage_configs(settings, 0, data, encoders, out / "seed-0", student.config)
    orders = []
    for arm in ("baseline", "viral"):
        config = config_from_dict(json.loads(json.dumps(configs[arm])))
        config.output_dir = str(tmp_path / f"order-{arm}")
        trainer, parts = build_trainer(config)
        assert (parts["head"] is None) == (arm == "baseline")
        loader = iter(trainer.get_train_dataloader())
        orders.append([next(loader)["record_index"] for _ in range(3)])
    assert orders[0] == orders[1]

    # a second call reuses every finished run (nothing retrained)
    stamp = (out / "seed-0" / "viral" / "model.safetensors").stat().st_mtime_ns
    first_seconds = json.loads((out / "study.json").read_text())["seconds"]
    again = run_study(out, settings, EncoderSettings(**TINY_ENCODERS), data_dir=data, encoders_dir=encoders)
    assert (out / "seed-0" / "viral" / "model.safetensors").stat().st_mtime_ns == stamp
    # ... and keeps how long the call that trained them took
    assert again["seconds"]["earlier"] == [{"total": first_seconds["total"], "stages": first_seconds["stages"]}]
    assert f"earlier calls on this folder: {first_seconds['total'] / 60:.1f} min" in (out / "study.md").read_text()

    # a study with a longer stage 2 copies in the first one's language stage and stage 1 (--reuse-from) and
    # trains only the arms, whose configs differ in train.max_steps
    longer = tmp_path / "longer"
    settings.seeds, settings.finetune_steps, settings.curve_every = [0], 4, 0
    reused = run_study(longer, settings, EncoderSettings(**TINY_ENCODERS), data_dir=data, encoders_dir=encoders,
                       reuse_from=out)
    assert reused["copied_from"] == {str(longer / "language"): str(out / "language"),
                                     str(longer / "seed-0" / "pretrain"): str(out / "seed-0" / "pretrain")}
    for stage in ("language", "seed-0/pretrain"):
        assert (longer / stage / "model.safetensors").read_bytes() == (out / stage / "model.safetensors").read_bytes()
    pretrain = yaml.safe_load((longer / "seed-0" / "pretrain" / "viral_config.yaml").read_text())
    assert pretrain["output_dir"] == str(longer / "seed-0" / "pretrain")
    assert pretrain["model"]["model_path"] == str(longer / "language")
    assert reused["runs"]["0"]["pretrain"]["dir"] == str(longer / "seed-0" / "pretrain")
    for arm in ("baseline", "viral"):
        arm_config = yaml.safe_load((longer / "seed-0" / arm / "viral_config.yaml").read_text())
        assert arm_config["model"]["model_path"] == str(longer / "seed-0" / "pretrain")
        assert [json.loads(x)["step"] for x in (longer / "seed-0" / arm / "metrics.jsonl").read_text().splitlines()] \
            == [1, 2, 3, 4]
    assert "Runs copied from an earlier study" in (longer / "study.md").read_text()
    with pytest.raises(ConfigError, match="not a study folder"):
        run_study(tmp_path / "other", settings, EncoderSettings(**TINY_ENCODERS), data_dir=data,
                  encoders_dir=encoders, reuse_from=tmp_path / "shapes")


def test_a_run_folder_with_another_config_is_refused(tmp_path, small_world, stage0):
    from transformers import CLIPVisionConfig

    from viral.config import ConfigError
    from viral.study.pipeline import StudySettings, run_one, stage_configs

    encoders, _ = stage0
    settings = StudySettings(seeds=[0], overrides=["model.hidden_size=32", "model.num_layers=2"], pretrain_steps=1)
    student = CLIPVisionConfig.from_pretrained(encoders / "student")
    config = stage_configs(settings, 0, Path(small_world), encoders, tmp_path / "seed-0", student)["pretrain"]
    run_dir = Path(config["output_dir"])
    run_dir.mkdir(parents=True)
    other = json.loads(json.dumps(config))
    other["train"]["learning_rate"] = 0.5
    (run_dir / "viral_config.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(ConfigError, match="different config"):
        run_one(config)


def test_run_parallel_keeps_order_and_gives_each_process_one_thread():
    from viral.parallel import run_parallel

    calls = [((("k", i),),) for i in range(3)]
    assert run_parallel(dict, calls, jobs=1) == [{"k": i} for i in range(3)]
    assert run_parallel(dict, calls, jobs=2) == [{"k": i, "threads": 1} for i in range(3)]


def _sleep_then_name(name, seconds, threads=None):
    import time

    time.sleep(seconds)
    return name, threads


@pytest.mark.parametrize("workers", [1, 2])
def test_run_graph_starts_a_job_only_after_what_it_needs_and_reports_when_each_ran(workers):
    from viral.parallel import Job, run_graph

    jobs = [Job("a", _sleep_then_name, ("a", 0.3)), Job("b", _sleep_then_name, ("b", 0.1), ("a",)),
            Job("c", _sleep_then_name, ("c", 0.1), ("skipped stage",)),  # a need that is no job: ignored
            Job("d", _sleep_then_name, ("d", 0.0), ("b", "c"))]
    seen = []
    done = run_graph(jobs, workers, finished=lambda name, result: seen.append((name, result[0])))
    assert sorted(done) == ["a", "b", "c", "d"] and sorted(seen) == [(n, n) for n in "abcd"]
    assert all(done[n][0] == (n, 1 if workers > 1 else None) for n in "abcd")  # one thread per worker process
    start, end = {n: done[n][1] for n in done}, {n: done[n][2] for n in done}
    assert start["b"] >= end["a"] and start["d"] >= max(end["b"], end["c"])
    assert seen.index(("d", "d")) == 3
    if workers == 1:  # one at a time, in list order among ready jobs
        assert [name for name, _ in seen] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="cycle"):
        run_graph([Job("x", _sleep_then_name, ("x", 0), ("y",)), Job("y", _sleep_then_name, ("y", 0), ("x",))],
                  workers)
    with pytest.raises(ValueError, match="repeat"):
        run_graph([Job("x", _sleep_then_name, ("x", 0)), Job("x", _sleep_then_name, ("x", 0))], workers)


def test_the_study_graph_runs_each_stage_after_what_it_reads(tmp_path):
    from viral.study.pipeline import StudySettings, study_jobs

    settings = StudySettings(seeds=[0, 1])
    configs = {seed: {"language": {}, "pretrain": {}, "baseline": {}, "viral": {}} for seed in (0, 1)}
    jobs = study_jobs(settings, configs, tmp_path / "shapes", tmp_path / "encoders", EncoderSettings(),
                      ["student", "teacher"])
    needs = {job.name: set(job.needs) for job in jobs}
    # one language stage for every seed, from the start beside the encoders (it reads no image); stage 1 puts
    # its LLM on the trained student
    assert [job.name for job in jobs] == ["language", "student", "teacher", "pretrain 0", "viral 0", "baseline 0",
                                          "pretrain 1", "viral 1", "baseline 1", "probes"]
    assert needs == {"student": set(), "teacher": set(), "language": set(), "pretrain 0": {"language", "student"},
                     "viral 0": {"pretrain 0", "teacher"}, "baseline 0": {"pretrain 0"},
                     "pretrain 1": {"language", "student"}, "viral 1": {"pretrain 1", "teacher"},
                     "baseline 1": {"pretrain 1"}, "probes": {"student", "teacher"}}
    # reused encoders: no stage-0 jobs, and nothing waits for them
    assert [job.name for job in study_jobs(settings, configs, tmp_path, tmp_path, EncoderSettings(), [])][0] == \
        "language"
    # no language stage: stage 1 builds the tiny LLaVA on the student tower
    without = {seed: {"pretrain": {}, "baseline": {}, "viral": {}} for seed in (0, 1)}
    needs = {job.name: set(job.needs) for job in study_jobs(settings, without, tmp_path, tmp_path, EncoderSettings(),
                                                            ["student", "teacher"])}
    assert "language" not in needs and needs["pretrain 0"] == needs["pretrain 1"] == {"student"}


def test_probes_give_the_same_numbers_whatever_ran_before(small_world):
    from viral.study.probes import probe_tasks, run_probes
    from viral.study.world import load_split

    train, test = load_split(small_world, "train"), load_split(small_world, "eval")
    tasks = probe_tasks(train, test)
    features = torch.randn(len(train), 16, 8, generator=torch.Generator().manual_seed(1))
    test_features = torch.randn(len(test), 16, 8, generator=torch.Generator().manual_seed(2))
    results = []
    for state in (3, 4):  # a pool worker's global RNG is whatever its earlier calls (or the OS) left
        torch.manual_seed(state)
        torch.randn(100)
        results.append(run_probes(features, test_features, tasks, steps=5, seed=0))
    assert results[0] == results[1]


def test_centre_targets_point_at_the_object_covering_each_patch_and_move_with_flips(small_world):
    from viral.study.encoders import _flip, centre_targets
    from viral.study.world import load_split

    split = load_split(small_world, "train")
    centres, covered = centre_targets(split, 4)  # [n, 16, 2], [n, 16]
    assert centres.shape == (len(split), 16, 2) and covered.shape == (len(split), 16)
    alone = [(i, objects[0]) for i, objects in enumerate(split.objects) if len(objects) == 1]
    assert len(alone) >= 2
    for i, o in alone:  # the patch holding a lone object's centre pixel points at that object
        patch = int(o.cy // 8) * 4 + int(o.cx // 8)
        assert covered[i, patch] > 0
        assert torch.allclose(centres[i, patch], torch.tensor([(o.cx + 0.5) / 32, (o.cy + 0.5) / 32]), atol=0.02)
    assert ((covered == 0) | (centres.min(-1).values >= 0)).all() and (centres <= 1).all()

    pixels = torch.zeros(len(split), 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    while True:  # a draw that flips horizontally only
        state = generator.get_state()
        flips = [bool(torch.rand((), generator=generator) < 0.5) for _ in range(2)]
        if flips == [True, False]:
            break
    generator.set_state(state)
    _, (flipped_cover,), flipped = _flip(pixels, [covered[..., None]], 4, generator, centres)
    grid_before, grid_after = centres.view(-1, 4, 4, 2), flipped.view(-1, 4, 4, 2)
    assert torch.allclose(grid_after[:, :, 0, 0], 1 - grid_before[:, :, 3, 0])  # mirrored place, mirrored x
    assert torch.allclose(grid_after[:, :, 0, 1], grid_before[:, :, 3, 1])  # y unchanged
    assert torch.equal(flipped_cover.view(-1, 4, 4), covered.view(-1, 4, 4).flip(2))


def test_teacher_standardisation_folds_into_its_norm_and_heads_read_the_same():
    from viral.study.encoders import build_teacher_model, standardise_teacher

    settings = EncoderSettings(**TINY_ENCODERS)
    torch.manual_seed(0)
    model = build_teacher_model(settings).eval()
    with torch.no_grad():  # a shared offset and uneven scales, as training leaves them
        model.layernorm.bias.add_(torch.linspace(-2, 3, 32))
        model.layernorm.weight.mul_(torch.linspace(0.2, 4, 32))
    heads = [torch.nn.Linear(32, 4), torch.nn.Linear(32, 2)]
    pixels = torch.randn(12, 3, 48, 48)
    with torch.no_grad():
        before = model(pixel_values=pixels).last_hidden_state[:, 1:]  # [12, 36, 32]
        logits_before = [head(before) for head in heads]
    cosines = standardise_teacher(model, heads, pixels)
    with torch.no_grad():
        after = model(pixel_values=pixels).last_hidden_state[:, 1:].flatten(0, 1)  # [12*36, 32]
        for head, logits in zip(heads, logits_before):
            assert torch.allclose(head(after.view(12, 36, 32)), logits, atol=1e-4)
    assert torch.allclose(after.mean(0), torch.zeros(32), atol=1e-4)
    assert torch.allclose(after.std(0), torch.ones(32), atol=1e-3)
    assert cosines["constant_target_cosine_raw"] > 0.5 > abs(cosines["constant_target_cosine"])


def test_the_student_starts_from_clip_random_positions_unless_asked_for_sincos():
    from viral.study.encoders import build_student, sincos_positions

    settings = dict(TINY_ENCODERS)
    torch.manual_seed(0)
    random = build_student(EncoderSettings(**settings), 32).embeddings.position_embedding.weight
    sincos = build_student(EncoderSettings(**settings, student_positions="sincos"), 32)
    assert torch.equal(sincos.embeddings.position_embedding.weight, sincos_positions(4, 32))
    assert random.std() < 0.05 and not torch.allclose(random, sincos_positions(4, 32), atol=0.1)
    with pytest.raises(ValueError, match="student_positions"):
        build_student(EncoderSettings(**settings, student_positions="learned"), 32)


def test_question_type_reads_every_shapesworld_question():
    from viral.data.shapes import QUESTION_TYPES, _question, draw_scene
    from viral.data.shapes import question_type

    seen = set()
    for index in range(40):
        rng, objects, _, _ = draw_scene(1, "train", index, 64, 3)
        for qtype in QUESTION_TYPES:
            made = _question(rng, objects, qtype, 64)
            if made is not None:
                assert question_type(made[0]) == qtype, made
                seen.add(qtype)
    assert seen == set(QUESTION_TYPES)


def test_scene_oracle_trains_on_scene_text_and_scores_the_kept_types(tmp_path, small_world, stage0):
    from viral.data.shapes import scene_words
    from viral.study.oracle import CORPUS_NAME, PREDICTIONS_NAME, RESULT_NAME, OracleSettings, scene_oracle
    from viral.study.world import load_split

    encoders, _ = stage0
    settings = OracleSettings(steps=2, types=["count", "existence"], single_turn=True,
                              overrides=["model.hidden_size=32", "model.num_layers=2"])
    result = scene_oracle(small_world, encoders, tmp_path / "oracle", settings)
    assert result["grid"] == 4  # the fixture's student: 32-px images in 8-px patches
    train = load_split(small_world, "train")
    scenes = {name: scene_words(labels, 4) for name, labels in zip(train.names, train.labels)}
    corpus = json.loads((tmp_path / "oracle" / CORPUS_NAME).read_text())
    source = {f"train-{i}": r for i, r in enumerate(json.loads((Path(small_world) / "train.json").read_text()))}
    kept = 0
    for record in corpus:
        human, gpt = record["conversations"]  # single turn
        original = source[record["id"].split("-", 1)[1].rsplit("-", 1)[0]]
        scene = scenes[Path(original["image"]).name]
        assert "<image>" not in human["value"] and human["value"].startswith(scene + "\n")
        question = human["value"][len(scene) + 1:]
        assert question.startswith(("How many", "Is there"))
        turns = original["conversations"]
        answers = {t["value"].replace("<image>\n", ""): a["value"] for t, a in zip(turns[::2], turns[1::2])}
        assert answers[question] == gpt["value"]
        kept += 1
    assert kept == result["records"] == sum(
        1 for r in source.values() for t in r["conversations"][::2]
        if t["value"].replace("<image>\n", "").startswith(("How many", "Is there")))
    saved = json.loads((tmp_path / "oracle" / RESULT_NAME).read_text())
    assert saved["scores"] == result["scores"]
    # accuracy per kept type, and the existence questions' yes rates (truth yes / truth no)
    assert {k for k in result["scores"] if not k.startswith("existence_")} == {"accuracy", "count", "existence"}
    assert {"existence_recall", "existence_false_positive_rate"} <= set(result["scores"])
    bench = [json.loads(line) for line in (Path(small_world) / "eval.jsonl").read_text().splitlines()]
    asked = [row for row in bench if row["type"] in ("count", "existence")]
    predictions = [json.loads(line) for line in (tmp_path / "oracle" / PREDICTIONS_NAME).read_text().splitlines()]
    assert [p["question_id"] for p in predictions] == [row["question_id"] for row in asked]
    evaluation = load_split(small_world, "eval")
    eval_scenes = {name: scene_words(labels, 4) for name, labels in zip(evaluation.names, evaluation.labels)}
    for prediction, row in zip(predictions, asked):
        assert prediction["prompt"] == f"{eval_scenes[Path(row['image']).name]}\n{row['question']}"


def test_the_runs_progress_bar_starts_at_steps_already_written_and_times_only_new_ones(tmp_path):
    from viral.study.pipeline import RunsProgress

    reused, fresh = tmp_path / "reused.jsonl", tmp_path / "fresh.jsonl"
    reused.write_text(json.dumps({"step": 90}) + "\n")
    with RunsProgress("runs", [(reused, 100), (fresh, 50)], every=0.05) as progress:
        assert progress.bar.n == 90
        fresh.write_text(json.dumps({"step": 10}) + "\n" + json.dumps({"loss": 1.0}) + "\n")
        import time

        deadline = time.time() + 5
        while progress.bar.n != 100 and time.time() < deadline:
            time.sleep(0.02)
        meter = progress.bar.format_dict
        assert meter["n"] == 100 and meter["initial"] == 90  # rate and time left count the 10 new steps only
    assert progress.bar.n == 100
