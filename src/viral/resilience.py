"""Losing nothing: atomic checkpoints, SIGTERM checkpoints, non-finite loss guard, output-dir guard.

- `save_checkpoint_atomically` lets the Trainer write a checkpoint into a hidden staging folder and
  renames it to `checkpoint-N` only when every file is written, so `resume_from_checkpoint` (and
  transformers' `get_last_checkpoint`) never sees a half-written checkpoint.
- `SigtermCheckpoint` turns SIGTERM (what schedulers send before killing a job) into "save a checkpoint
  at the end of this step, then stop".
- `NonFiniteGuard` drops the optimizer update of a step whose L_LM or L_VRA was NaN/inf (all ranks
  agree), logs the batch's record indices, and stops the run after `max_bad_steps` consecutive ones.
- `check_output_dir` refuses to write a new run over a finished or started one unless asked.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from viral.config import ConfigError

logger = logging.getLogger(__name__)
STAGING_PREFIX = ".staging-"


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a NaN or infinite loss."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM arrived; a checkpoint was written and the run stopped early."""

    def __init__(self, checkpoint: str | None, step: int):
        self.checkpoint, self.step = checkpoint, step
        super().__init__(f"stopped by SIGTERM at step {step}; resume with "
                         f"train.resume_from_checkpoint={checkpoint}")


def _any_rank(flag: bool) -> bool:
    """True when `flag` is true on any rank (a collective: every rank must call it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def save_checkpoint_atomically(trainer, save_checkpoint, model, trial) -> None:
    """Run the Trainer's `_save_checkpoint` into a staging folder, then rename it into place."""
    run_dir = trainer._get_output_dir(trial=trial)
    step = trainer.state.global_step
    name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
    staging = os.path.join(run_dir, f"{STAGING_PREFIX}{step}")
    original = trainer._get_output_dir
    trainer._get_output_dir = lambda trial=None: staging
    try:
        save_checkpoint(model, trial)
    finally:
        trainer._get_output_dir = original
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        final = os.path.join(run_dir, name)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(os.path.join(staging, name), final)
        shutil.rmtree(staging, ignore_errors=True)
        fd = os.open(run_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        rotate_checkpoints(output_dir=run_dir, save_total_limit=trainer.args.save_total_limit,
                           best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=True)
    trainer.accelerator.wait_for_everyone()


def remove_stale_staging(run_dir: str | Path) -> None:
    """Delete staging folders a killed save left behind."""
    for path in Path(run_dir).glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


class SigtermCheckpoint(TrainerCallback):
    """On SIGTERM: finish the current step, save a checkpoint, stop training."""

    def __init__(self):
        self.received = False
        self.step: int | None = None
        self._previous = None
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None

    def _handle(self, signum, frame) -> None:
        logger.warning("SIGTERM received: saving a checkpoint after this step, then stopping")
        self.received = True

    def on_step_end(self, args, state, control, **kwargs):
        if _any_rank(self.received):
            self.received = True
            self.step = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class NonFiniteGuard(TrainerCallback):
    """Skips the update of a step with a non-finite loss; stops after `max_bad_steps` in a row."""

    def __init__(self, trainer, max_bad_steps: int):
        self.trainer = trainer
        self.max_bad_steps = max_bad_steps
        self.consecutive = 0
        self.total = 0

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        bad = _any_rank(self.trainer.bad_step_records is not None)
        records = self.trainer.bad_step_records or []
        self.trainer.bad_step_records = None
        if not bad:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        self.trainer.optimizer.zero_grad(set_to_none=True)  # no gradient: the optimizer leaves weights alone
        logger.error("non-finite loss at step %d (records %s): update skipped (%d in a row)",
                     state.global_step + 1, records, self.consecutive)
        if self.consecutive >= self.max_bad_steps:
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive steps had a NaN/inf loss (last records {records}); "
                f"stopping at step {state.global_step + 1}. The last good checkpoint is intact; lower the "
                f"learning rate or check those records, then resume.")

    def on_step_end(self, args, state, control, **kwargs):
        if self.consecutive:  # no checkpoint during a bad streak: rotation must not evict the last good one
            control.should_save = False
        return control


def check_output_dir(output_dir: str | Path, resume: str | None, overwrite: bool) -> None:
    """Refuse an output folder that holds a finished run or checkpoints, unless resuming or overwriting."""
    out = Path(output_dir)
    if resume or overwrite or not out.is_dir():
        return
    finished = (out / "config.json").is_file()
    checkpoints = sorted(p.name for p in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir())
    if finished or checkpoints:
        what = "a finished run" if finished else f"checkpoints {checkpoints[:3]}"
        raise ConfigError(
            f"output_dir {out} already holds {what}; choose another output_dir, resume with "
            f"train.resume_from_checkpoint=..., or set train.overwrite_output_dir=true")
