"""The study pipeline: world -> stage 0 encoders -> per seed, stage 1 then both arms of stage 2 -> evaluation.

Layout under OUT (every number in `study.json` traces to a run folder):

    shapes/                     the ShapesWorld data (reused when present; or --data elsewhere)
    encoders/                   stage 0: student/, teacher/, report.json (reused; or --encoders elsewhere)
    language/                   stage 0 of the LLM, one run for every seed (the paper's LLM is one pre-trained
                                model too): the tiny LLM pre-trained on the world's training turns and captions
                                as text, each image replaced by its scene as words laid out as the image tokens
                                are (`scene-text-{grid}.json` in the world's folder: language_corpus "scene"),
                                or removed (`text.json`: "text"), so that it arrives knowing the vocabulary, the
                                answer formats and - with scenes - how to answer from what stands where the
                                image tokens will be (skipped with language_steps = 0). It reads no image, so
                                its LLaVA holds a random tower of the student's shape and it trains beside the
                                encoders rather than after them
    seed-K/pretrain/            stage 1: projector pre-training on captions (train.stage=pretrain; the chat
                                template after a scene-text language stage, the plain one otherwise), the
                                trained student swapped in for the language stage's tower
    seed-K/baseline/            stage 2 without alignment (align.vra_loss: false)
    seed-K/viral/               stage 2 with VIRAL (teacher = encoders/teacher)
    study.json, study.md, study.png

Each run folder is what `viral train` writes (resolved `viral_config.yaml`, `metrics.jsonl`, TensorBoard
events under `runs/`, the checkpoint) plus `eval/shapes.json` + `eval/predictions.jsonl` (stage 2)
and `run.json` (wall and CPU seconds). Both arms of a seed start from the same stage-1 checkpoint with
the same `train.seed` (hence the same data order); the seed changes the tiny model's initialisation and
the data order, never the world or the benchmark.

Runs are resumable: a finished run (its `run.json`) is reused, an interrupted one resumes from its
last `checkpoint-*`, and a folder holding a different config is an error rather than silently mixed in.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from viral.config import ConfigError, config_from_dict, load_config
from viral.data.shapes import TEXT_CORPUS, write_text_corpus
from viral.evaluate.base import percent
from viral.evaluate.shapes import AXIS_GROUPS, axis_group
from viral.parallel import Job, run_graph
from viral.runs import METRICS_NAME, RUN_CONFIG_NAME
from viral.study.encoders import (PROGRESS_NAME, STUDENT_DIR, TEACHER_DIR, EncoderSettings, encoders_to_train,
                                  probe_encoders, stage0_encoder, student_config, tower_shape,
                                  write_encoder_report)

logger = logging.getLogger(__name__)

ARMS = ("baseline", "viral")
QUESTION_TYPES = ("count", "relation", "existence", "colour", "position")
RUN_RECORD = "run.json"
EVAL_DIR = "eval"
EVAL_FILE = "shapes.json"
CURVE_FILE = "eval_curve.jsonl"
DEFAULT_CONFIG = "configs/shapes-study.yaml"


@dataclass
class StudySettings:
    """What `viral study` varies; the model and optimisation live in the stage-2 config file."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    config: str = DEFAULT_CONFIG  # stage-2 config (VIRAL arm); stage 1 and the baseline derive from it
    overrides: list[str] = field(default_factory=list)  # --set overrides of the stage-2 config
    world_seed: int = 0
    n_train: int = 8000  # training images
    n_eval: int = 1500  # evaluation images: one question per type when it applies
    image_size: int = 96
    turns: int = 6  # QA turns per training image
    max_objects: int = 3  # objects per image: 1..max_objects
    # every type ShapesWorld asks (None: its DEFAULT_TYPES, without position)
    question_types: list[str] | None = field(default_factory=lambda: list(QUESTION_TYPES))
    type_weights: dict[str, float] | None = None  # how often each type is drawn for a training turn (uniform)
    relation_pairs: str = "apart"  # which objects a relation question compares (viral.data.shapes.RELATION_PAIRS)
    # stage-0 steps of the LLM on the world's text (0: the LLM starts random at stage 1); its loss on the scene
    # text levels off from about step 600
    language_steps: int = 1000
    # "scene": the language stage reads each image's scene as words where its image tokens will stand; "text":
    # the image is removed (with it existence and colour stayed near chance: stage 1 then taught the projector
    # almost nothing, a caption's loss with its own image 0.63 against 0.77 with another image's)
    language_corpus: str = "scene"
    language_max_length: int = 320  # data.model_max_length of the language stage (a scene adds 64 words)
    language_seed: int = 0  # the one language stage's initialisation and data order, whatever the study's seeds
    pretrain_steps: int = 150
    finetune_steps: int | None = None  # None: the config's train.max_steps
    eval_batch_size: int = 64
    eval_limit: int | None = None
    curve_every: int = 100  # stage-2 steps between evaluations on the first `curve_questions` questions (0: off)
    curve_questions: int = 500
    jobs: int = 1  # processes running the study's jobs side by side (1 thread each when > 1)


LANGUAGE_DIR = "language"
LANGUAGE_CORPORA = ("scene", "text")
SCENE_CORPUS = "scene-text-{grid}.json"  # in the world's folder: the scene-text corpus on a grid x grid raster


def ensure_world(data_dir: Path, settings: StudySettings) -> Path:
    """Generate the world unless `data_dir` already holds one with the same seed, sizes and image size."""
    from viral.data.shapes import DEFAULT_TYPES, generate

    types = list(settings.question_types or DEFAULT_TYPES)
    meta_file = data_dir / "meta.json"
    wanted = {"seed": settings.world_seed, "n_train": settings.n_train, "n_eval": settings.n_eval,
              "size": settings.image_size, "turns": settings.turns, "max_objects": settings.max_objects,
              "type_weights": settings.type_weights, "question_types": types, "relation_pairs": settings.relation_pairs}
    if meta_file.is_file() and (data_dir / "eval.jsonl").is_file():
        meta = {"relation_pairs": "apart", **json.loads(meta_file.read_text())}  # worlds from before the option
        differs = {k: (meta.get(k), v) for k, v in wanted.items() if meta.get(k) != v}
        if differs:
            raise ConfigError(f"{data_dir} holds a ShapesWorld with different settings (found, wanted): {differs}; "
                              "point --data elsewhere or match --train-images/--eval-images")
        if not (data_dir / TEXT_CORPUS).is_file():  # a world written before the language stage existed
            write_text_corpus(data_dir)
        return data_dir
    logger.info("generating ShapesWorld in %s", data_dir)
    try:
        generate(data_dir, seed=settings.world_seed, n_train=settings.n_train, n_eval=settings.n_eval,
                 size=settings.image_size, turns=settings.turns, max_objects=settings.max_objects,
                 type_weights=settings.type_weights, types=types, progress=False, jobs=settings.jobs,
                 relation_pairs=settings.relation_pairs)
    except ValueError as error:  # the world's settings (types, weights, relation pairs) as the user gave them
        raise ConfigError(f"ShapesWorld in {data_dir}: {error}") from error
    return data_dir


def language_corpus(data_dir: Path, settings: StudySettings, grid: int) -> Path:
    """The language stage's corpus in the world's folder, written when missing: `text.json` or the scene-text
    corpus on the student's `grid` x `grid` image-token raster (`SCENE_CORPUS`)."""
    from viral.study.world import split_scenes

    if settings.language_corpus not in LANGUAGE_CORPORA:
        raise ConfigError(f"language_corpus {settings.language_corpus!r}: choose among {LANGUAGE_CORPORA}")
    if settings.language_corpus == "text":
        return data_dir / TEXT_CORPUS
    path = data_dir / SCENE_CORPUS.format(grid=grid)
    if not path.is_file():
        logger.info("writing the scene-text corpus %s", path)
        write_text_corpus(data_dir, scenes=split_scenes(data_dir, "train", grid), name=path.name)
    return path


def stage_configs(settings: StudySettings, seed: int, data_dir: Path, encoders_dir: Path, seed_dir: Path,
                  student, corpus: Path | None = None) -> dict[str, dict[str, Any]]:
    """Resolved config dicts of one seed's runs: `language` (shared by the seeds, in the study's folder beside
    `seed_dir`; read from `corpus`, default the world's `text.json`; on a random tower of the shape of
    `student`, the student's CLIP vision config), `pretrain`, `baseline`, `viral`."""
    # progress: one bar in the study's process (RunsProgress) over the runs, none of their own
    base = list(settings.overrides) + ["train.disable_tqdm=true"]
    common = base + [f"train.seed={seed}"]
    if settings.finetune_steps is not None:
        common.append(f"train.max_steps={settings.finetune_steps}")
    viral = load_config(settings.config, common)
    num_layers = viral.model.num_layers
    pretrain_dir, language_dir = seed_dir / "pretrain", seed_dir.parent / LANGUAGE_DIR
    corpus = corpus or data_dir / TEXT_CORPUS
    scenes = corpus.name != TEXT_CORPUS  # the image's place holds its scene as words: those words join the vocabulary
    words = [data_dir / "train.json", data_dir / "captions.json"] + ([corpus] if scenes else [])

    student_tower = f"model.vision_tower_path={encoders_dir / STUDENT_DIR}"

    def tiny(model_seed: int, tower: list[str]) -> list[str]:
        return ["model.preset=tiny", f"model.seed={model_seed}", *tower,
                f"model.tokenizer_corpus={','.join(str(path) for path in words)}"]

    configs = {}
    template = "plain"
    if settings.language_steps:
        # the LLM alone on text-only records (no image: the projector and the tower get no gradient)
        configs["language"] = load_config(settings.config, base + tiny(settings.language_seed, tower_shape(student)) + [
            f"train.seed={settings.language_seed}", f"output_dir={language_dir}", f"data.path={corpus}",
            f"data.model_max_length={settings.language_max_length}", "train.stage=finetune",
            "train.finetune_mode=full", f"train.max_steps={settings.language_steps}", "align.vra_loss=false",
        ]).to_dict()
        start = ["model.preset=llava", f"model.model_path={language_dir}", student_tower]
        if scenes:  # the LLM learned the chat format with the scene where the image goes
            template = "auto"
    else:
        start = tiny(seed, [student_tower])
    pretrain = load_config(settings.config, common + start + [
        f"output_dir={pretrain_dir}", f"data.path={data_dir / 'captions.json'}", f"data.template={template}",
        "train.stage=pretrain", f"train.max_steps={settings.pretrain_steps}", "align.vra_loss=false",
    ])
    configs["pretrain"] = pretrain.to_dict()
    for arm in ARMS:
        config = load_config(settings.config, common + [
            f"output_dir={seed_dir / arm}", "model.preset=llava", f"model.model_path={pretrain_dir}",
            f"data.path={data_dir / 'train.json'}", "train.stage=finetune",
            f"align.vra_loss={'true' if arm == 'viral' else 'false'}",
            f"align.vra_target={encoders_dir / TEACHER_DIR}",
        ])
        if arm == "viral" and any(not 0 < layer < num_layers for layer in config.align.target_layers):
            logger.warning("align.target_layers %s: not a middle layer of a %d-layer LLM",
                           config.align.target_layers, num_layers)
        configs[arm] = config.to_dict()
    return configs


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    config = json.loads(json.dumps(config))
    config["train"].pop("resume_from_checkpoint", None)
    config["train"].pop("disable_tqdm", None)  # how the run showed progress, not what it trained
    return config


def _rebase(value: Any, moves: dict[str, str]) -> Any:
    """`value` (a config, nested) with every string that is a key of `moves` replaced by its value."""
    if isinstance(value, dict):
        return {key: _rebase(item, moves) for key, item in value.items()}
    if isinstance(value, list):
        return [_rebase(item, moves) for item in value]
    return moves.get(value, value) if isinstance(value, str) else value


def _differences(left: Any, right: Any, prefix: str = "") -> list[str]:
    """Dotted keys at which two configs differ."""
    if isinstance(left, dict) and isinstance(right, dict):
        return [name for key in sorted(set(left) | set(right), key=str)
                for name in _differences(left.get(key), right.get(key), f"{prefix}{key}.")]
    return [] if left == right else [prefix.rstrip(".")]


def adopt_runs(configs: list[dict[str, Any]], out: Path, source: Path) -> dict[str, str]:
    """Copy into `out` each finished run of an earlier study's folder `source` whose config is this study's run's
    at the same place (`language`, `seed-K/pretrain`, `seed-K/viral`, ...) once `source`'s run folders are read
    as `out`'s: same data, encoders, model and training, so only where it was saved differs. A run already in
    `out` is left alone. Returns {run folder: the folder it was copied from}."""
    moves = {str(source / Path(config["output_dir"]).relative_to(out)): config["output_dir"] for config in configs}
    adopted = {}
    for config in configs:
        new = Path(config["output_dir"])
        old = source / new.relative_to(out)
        if new.exists() or not (old / RUN_RECORD).is_file() or not (old / RUN_CONFIG_NAME).is_file():
            continue
        saved = _rebase(yaml.safe_load((old / RUN_CONFIG_NAME).read_text()), moves)
        differences = _differences(_comparable(saved), _comparable(config))
        if differences:
            logger.info("not reusing %s: its config differs in %s", old, ", ".join(differences))
            continue
        shutil.copytree(old, new)
        config_from_dict(saved, source=str(old / RUN_CONFIG_NAME)).save(new / RUN_CONFIG_NAME)
        record = json.loads((new / RUN_RECORD).read_text())
        record.update(dir=str(new), copied_from=str(old))
        (new / RUN_RECORD).write_text(json.dumps(record, indent=2))
        adopted[str(new)] = str(old)
        logger.info("reusing %s as %s", old, new)
    return adopted


def run_track(config: dict[str, Any]) -> tuple[Path, int]:
    """A run's progress for `RunsProgress`: its metrics file and its number of steps."""
    return Path(config["output_dir"]) / METRICS_NAME, int(config["train"]["max_steps"])


class RunsProgress:
    """One progress bar for work that trains in other processes: every few seconds it adds up the last step
    written to each `(file, steps)` track, a JSON line per logged step with a `step` field (a run's
    `metrics.jsonl`, an encoder's progress file; the workers draw no bars of their own, so nothing
    interleaves). Steps already written when it opens (reused or resumed runs) start the bar, outside its rate
    and time left."""

    def __init__(self, label: str, tracks: list[tuple[Path, int]], every: float = 2.0):
        self.label, self.every = label, every
        self.files = [path for path, _ in tracks]
        self.total = sum(steps for _, steps in tracks)
        self._stop = None

    @staticmethod
    def last_step(path: Path) -> int:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return 0
        for line in reversed(lines):
            try:
                return int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
        return 0

    def done(self) -> int:
        """Steps written so far over all tracks."""
        return min(self.total, sum(self.last_step(f) for f in self.files))

    def __enter__(self):
        import threading

        from tqdm.auto import tqdm

        self._stop = threading.Event()
        self.bar = tqdm(total=self.total, initial=self.done(), desc=self.label, unit="step", dynamic_ncols=True)

        def poll():
            while not self._stop.wait(self.every):
                self.bar.n = self.done()
                self.bar.refresh()

        self.thread = threading.Thread(target=poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.bar.n = self.done()
        self.bar.close()
        return False


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = [p for p in run_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(checkpoints, key=lambda p: int(p.name.split("-")[-1])) if checkpoints else None


class EvalCurveCallback(TrainerCallback):
    """Every `every` training steps: ShapesBench on the first `limit` questions with the model being trained.

    Appends `{step, questions, scores}` to `eval_curve.jsonl` in the run folder (benchmark scores over
    training steps, per type and per axis of relation and position: `AXIS_GROUPS`). Decoding is greedy and
    the torch RNG state is restored, so training is unchanged.
    """

    def __init__(self, data_dir: str, run_dir: Path, every: int, limit: int, batch_size: int = 64):
        self.data_dir, self.every, self.limit, self.batch_size = data_dir, every, limit, batch_size
        self.path = run_dir / CURVE_FILE
        self.parts: dict[str, Any] | None = None  # set by viral.train.train
        self.seconds = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if self.every <= 0 or state.global_step % self.every:
            return
        import torch

        from viral.evaluate import evaluate
        from viral.infer import Predictor

        start = time.time()
        llava, rng = self.parts["llava"], torch.get_rng_state()
        try:
            predictor = Predictor(llava, self.parts["processor"])
            summary = evaluate(predictor, "shapes", self.data_dir, limit=self.limit, batch_size=self.batch_size,
                               max_new_tokens=4, progress=False)
        finally:
            llava.train()
            torch.set_rng_state(rng)
        scores = {name: summary["metrics"][name] for name in ("accuracy", *QUESTION_TYPES, *AXIS_GROUPS)
                  if name in summary["metrics"]}
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": state.global_step, "questions": summary["counts"]["evaluated"],
                                     "scores": scores}) + "\n")
        self.seconds += time.time() - start


def run_one(config_dict: dict[str, Any], evaluate_on: str | None = None, eval_batch_size: int = 64,
            eval_limit: int | None = None, curve_every: int = 0, curve_questions: int = 1000,
            threads: int | None = None) -> dict[str, Any]:
    """Train one run (or reuse / resume it), evaluate it on ShapesBench when asked; returns its record."""
    import torch

    from viral.train import RUN_CONFIG_NAME, train

    if threads:
        torch.set_num_threads(threads)
    config = config_from_dict(json.loads(json.dumps(config_dict)), source="study")
    run_dir = Path(config.output_dir)
    record_file = run_dir / RUN_RECORD
    saved_config = run_dir / RUN_CONFIG_NAME
    if saved_config.is_file():
        saved = _comparable(yaml.safe_load(saved_config.read_text()))
        if saved != _comparable(config.to_dict()):
            raise ConfigError(f"{run_dir} holds a run with a different config ({saved_config}); "
                              "use another --out or delete that folder")
    record = json.loads(record_file.read_text()) if record_file.is_file() else None
    if record is None:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is not None:
            logger.info("resuming %s from %s", run_dir, checkpoint)
            config.train.resume_from_checkpoint = str(checkpoint)
        callbacks = []
        if evaluate_on is not None and curve_every > 0:
            if checkpoint is None and (run_dir / CURVE_FILE).exists():
                (run_dir / CURVE_FILE).unlink()
            callbacks.append(EvalCurveCallback(evaluate_on, run_dir, curve_every, curve_questions, eval_batch_size))
        start, cpu = time.time(), time.process_time()
        train(config, callbacks=callbacks)
        record = {"dir": str(run_dir), "train_seconds": round(time.time() - start, 1),
                  "train_cpu_seconds": round(time.process_time() - cpu, 1), "threads": torch.get_num_threads(),
                  "curve_seconds": round(sum(c.seconds for c in callbacks), 1),
                  "resumed_from": config.train.resume_from_checkpoint, "max_steps": config.train.max_steps}
        record_file.write_text(json.dumps(record, indent=2))
    if evaluate_on is not None and "scores" not in record:
        record.update(evaluate_run(run_dir, evaluate_on, eval_batch_size, eval_limit))
        record_file.write_text(json.dumps(record, indent=2))
    return record


def study_jobs(settings: StudySettings, configs: dict[int, dict[str, dict[str, Any]]], data: Path, encoders: Path,
               encoder_settings: EncoderSettings, train_encoders: list[str]) -> list[Job]:
    """The study as a graph of jobs, each after what it reads, listed by priority (the longest chain first):

    `language` (once, from the start: it reads no image), student, teacher (stage 0, when `train_encoders` names
    them) -> per seed `pretrain K` (the language stage's LLM on the student) -> `viral K` (also reads the
    teacher) and `baseline K` (ShapesBench at their end) -> `probes` of the two encoders last, filling a worker
    that would otherwise wait."""
    jobs = []
    first = configs[settings.seeds[0]]
    if "language" in first:  # one run for every seed; the longest job of stage 0
        jobs.append(Job(LANGUAGE_DIR, run_one, (first["language"],)))
    jobs += [Job(kind, stage0_encoder, (kind, str(data), str(encoders), asdict(encoder_settings), True))
             for kind in train_encoders]
    for seed in settings.seeds:
        stages = configs[seed]
        jobs.append(Job(f"pretrain {seed}", run_one, (stages["pretrain"],),
                        (LANGUAGE_DIR, STUDENT_DIR) if "language" in stages else (STUDENT_DIR,)))
        before = (f"pretrain {seed}",)
        for arm in ("viral", "baseline"):  # the VIRAL arm is the longer one
            jobs.append(Job(f"{arm} {seed}", run_one, (
                stages[arm], str(data), settings.eval_batch_size, settings.eval_limit, settings.curve_every,
                settings.curve_questions), before + ((TEACHER_DIR,) if arm == "viral" else ())))
    jobs.append(Job("probes", probe_encoders, (str(encoders),), (STUDENT_DIR, TEACHER_DIR)))
    return jobs


def evaluate_run(run_dir: Path, data_dir: str, batch_size: int = 64, limit: int | None = None) -> dict[str, Any]:
    """ShapesBench on a finished run with `viral.evaluate`; scores per type, in percent."""
    from viral.evaluate import evaluate
    from viral.infer import Predictor

    start, cpu = time.time(), time.process_time()
    predictor = Predictor.from_pretrained(str(run_dir), device="cpu", dtype="float32")
    summary = evaluate(predictor, "shapes", data_dir, output=run_dir / EVAL_DIR / EVAL_FILE, batch_size=batch_size,
                       max_new_tokens=4, limit=limit, progress=False, model_path=str(run_dir))
    scores = {name: summary["metrics"][name] for name in ("accuracy", *QUESTION_TYPES) if name in summary["metrics"]}
    return {"scores": scores, "eval_seconds": round(time.time() - start, 1),
            "eval_cpu_seconds": round(time.process_time() - cpu, 1), "questions": summary["counts"]["evaluated"]}


def question_form(question: str, vocabulary: set[str]) -> str:
    """The question with its vocabulary words (colours, shapes) masked: 'Is the * object left or right of ...'."""
    return " ".join("*" if word.strip("?.,").lower() in vocabulary else word for word in question.split())


def chance_levels(data_dir: Path) -> dict[str, float]:
    """Per type (and per axis of relation and position: `AXIS_GROUPS`), the accuracy (%) of the best answer
    prior: the most frequent answer of each question form.

    The form is the question with the world's colour and shape words masked, so a "left or right" question
    counts "left" and an "above or below" one "above": what a model that ignores the image can reach.
    """
    meta_file = data_dir / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    vocabulary = {word.lower() for word in meta.get("shapes", []) + meta.get("colours", [])}
    answers: dict[str, dict[str, dict[str, int]]] = {}
    for line in (data_dir / "eval.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            form_name = question_form(row["question"], vocabulary)
            for group in (row["type"], axis_group(row["type"], row["answer"])):
                if group is not None:
                    form = answers.setdefault(group, {}).setdefault(form_name, {})
                    form[row["answer"]] = form.get(row["answer"], 0) + 1
    return {name: round(100.0 * sum(max(c.values()) for c in forms.values())
                        / sum(sum(c.values()) for c in forms.values()), 2)
            for name, forms in answers.items()}


def per_question(run_dir: Path) -> dict[str, dict[str, bool]]:
    """`{type: {question_id: correct}}` from a run's predictions.jsonl, also per axis (`position_horizontal`, ...)
    and over all questions (`accuracy`)."""
    out: dict[str, dict[str, bool]] = {}
    for line in (run_dir / EVAL_DIR / "predictions.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            for group in ("accuracy", row["type"], axis_group(row["type"], row["answer"])):
                if group is not None:
                    out.setdefault(group, {})[row["question_id"]] = bool(row["correct"])
    return out


def run_study(out: str | Path, settings: StudySettings | None = None, encoder_settings: EncoderSettings | None = None,
              data_dir: str | Path | None = None, encoders_dir: str | Path | None = None,
              command: str | None = None, reuse_from: str | Path | None = None) -> dict[str, Any]:
    """The whole study; writes study.json, study.md and study.png under `out` and returns the summary.

    `reuse_from`: an earlier study's folder whose finished runs with this study's configs are copied in first
    (`adopt_runs`), e.g. its language stage and stage 1 when only stage 2's length differs."""
    from viral.study.report import write_report
    from viral.study.stats import mcnemar, summarise

    settings = settings or StudySettings()
    out = Path(out)
    if reuse_from is not None and not (Path(reuse_from) / LANGUAGE_DIR).is_dir() and \
            not list(Path(reuse_from).glob("seed-*")):
        raise ConfigError(f"--reuse-from {reuse_from}: not a study folder (no language/ or seed-*/ in it)")
    out.mkdir(parents=True, exist_ok=True)
    start, cpu = time.time(), time.process_time()
    stage_seconds: dict[str, float] = {}  # wall seconds per stage, in order (reused stages take ~0)
    lap = time.time()

    def stage_done(name: str) -> None:
        nonlocal lap
        stage_seconds[name], lap = round(time.time() - lap, 1), time.time()

    data = ensure_world(Path(data_dir) if data_dir else out / "shapes", settings)
    stage_done("world")
    encoders = Path(encoders_dir) if encoders_dir else out / "encoders"
    encoder_settings = encoder_settings or EncoderSettings()
    kinds = encoders_to_train(encoders, encoder_settings)
    student = student_config(encoder_settings, settings.image_size)
    corpus = language_corpus(data, settings, student.image_size // student.patch_size)
    configs = {seed: stage_configs(settings, seed, data, encoders, out / f"seed-{seed}", student, corpus)
               for seed in settings.seeds}
    unique_configs = list({config["output_dir"]: config for seed in settings.seeds
                           for config in configs[seed].values()}.values())
    adopted = adopt_runs(unique_configs, out, Path(reuse_from)) if reuse_from else {}
    jobs = study_jobs(settings, configs, data, encoders, encoder_settings, kinds)
    sections: dict[str, dict[str, Any]] = {}

    def finished(name: str, result: Any) -> None:
        if name in kinds:  # both encoders trained: their report, which the probes complete
            sections[name] = result
            if len(sections) == len(kinds):
                write_encoder_report(encoders, data, encoder_settings, sections[STUDENT_DIR], sections[TEACHER_DIR],
                                     max(s["seconds"] for s in sections.values()))

    steps = {STUDENT_DIR: encoder_settings.student_steps, TEACHER_DIR: encoder_settings.teacher_steps}
    tracks = [(encoders / kind / PROGRESS_NAME, steps[kind]) for kind in kinds]
    tracks += [run_track(config) for config in unique_configs]
    logger.info("stages 0-2, seeds %s: %d jobs, %d side by side", settings.seeds, len(jobs), settings.jobs)
    label = "stages 0-2 (encoders, language, stage 1, both arms)" if kinds else "stages 1-2 (language, stage 1, both arms)"
    with RunsProgress(label, tracks):
        done = run_graph(jobs, settings.jobs, finished)
    stage_done("stages 0-2 and ShapesBench")
    encoder_report = done["probes"][0]
    shared = {LANGUAGE_DIR: done[LANGUAGE_DIR][0]} if LANGUAGE_DIR in done else {}
    runs: dict[int, dict[str, Any]] = {seed: {**shared, **{stage: done[f"{stage} {seed}"][0] for stage in
                                                          ("pretrain", *ARMS)}} for seed in settings.seeds}
    scores = {arm: {seed: runs[seed][arm]["scores"] for seed in settings.seeds} for arm in ARMS}
    chance = chance_levels(data)
    types = ["accuracy", *(name for name in QUESTION_TYPES if name in chance)]
    within_seed = {}
    for seed in settings.seeds:
        questions = {arm: per_question(Path(runs[seed][arm]["dir"])) for arm in ARMS}
        for arm in ARMS:  # relation and position per axis, from the predictions (runs scored before they existed too)
            runs[seed][arm]["axes"] = {name: percent(sum(questions[arm][name].values()), len(questions[arm][name]))
                                       for name in AXIS_GROUPS if name in questions[arm]}
        b, v = questions["baseline"], questions["viral"]
        within_seed[seed] = {name: mcnemar(b[name], v[name]) for name in (*types, *AXIS_GROUPS)
                             if name in b and name in v}
    summary = {
        "command": command,
        "settings": asdict(settings),
        "data": str(data),
        "encoders": {"dir": str(encoders), **{k: encoder_report.get(k) for k in
                                                ("probes", "diagnostics", "seconds")},
                     "student_eval": encoder_report["student"]["eval"],
                     "teacher_eval": encoder_report["teacher"]["eval"]},
        "chance": chance,
        "runs": {str(seed): runs[seed] for seed in settings.seeds},
        "copied_from": adopted,
        "statistics": summarise(scores, types),
        "statistics_by_axis": summarise({arm: {seed: runs[seed][arm]["axes"] for seed in settings.seeds}
                                         for arm in ARMS}, list(AXIS_GROUPS)),
        "mcnemar_per_seed": {str(seed): value for seed, value in within_seed.items()},
        "seconds": {"total": round(time.time() - start, 1), "stages": stage_seconds,
                    "jobs": {name: {"start": begin, "end": end} for name, (_, begin, end) in done.items()},
                    "cpu_main_process": round(time.process_time() - cpu, 1)},
    }
    summary["seconds"]["earlier"] = earlier_seconds(out / "study.json")
    summary["above_chance"] = above_chance(summary)
    (out / "study.json").write_text(json.dumps(summary, indent=2))
    summary["outputs"] = write_report(out, summary)
    (out / "study.json").write_text(json.dumps(summary, indent=2))
    return summary


def earlier_seconds(study_file: Path) -> list[dict[str, Any]]:
    """The wall times of the earlier calls that wrote `study_file` (oldest first), so that re-running a finished
    study to refresh its tables (which takes seconds) keeps how long the call that trained it took."""
    if not study_file.is_file():
        return []
    seconds = json.loads(study_file.read_text()).get("seconds", {})
    if "total" not in seconds:
        return []
    return [*seconds.get("earlier", []), {"total": seconds["total"], "stages": seconds.get("stages", {})}]


def above_chance(summary: dict[str, Any], margin: float = 10.0) -> dict[str, Any]:
    """Per arm and type: is every seed's accuracy at least `margin` points above the type's chance?"""
    result: dict[str, Any] = {"margin": margin, "all": True}
    for arm in ARMS:
        result[arm] = {}
        for name in QUESTION_TYPES:
            chance = summary["chance"].get(name)
            values = [run[arm]["scores"].get(name) for run in summary["runs"].values()]
            if chance is None or any(v is None for v in values):
                continue
            ok = min(values) >= chance + margin
            result[arm][name] = ok
            result["all"] = result["all"] and ok
    return result
