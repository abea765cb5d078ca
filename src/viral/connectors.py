"""The connector slot: how the image reaches the LLM, `llava` (image tokens) or `vlora` (low-rank weights).

Training (`viral.train.build_trainer`, `export`) and inference (`viral.infer.Predictor.from_pretrained`)
dispatch through `CONNECTORS`. An entry names its functions as "module:attribute" strings, imported on
first use, so the core never imports an alternative and the import graph has no cycle: `viral.vlora.train`
builds on `viral.train`, never the other way round.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from viral.config import ConfigError


@dataclass(frozen=True)
class Connector:
    """Where one connector's pieces live ("module:attribute")."""

    build_trainer: str  # (ExperimentConfig) -> (Trainer, parts)
    export: str  # (ExperimentConfig, parts, output_dir) -> Path of the written model folder
    predictor: str  # a Predictor class with `from_pretrained(model_path, device=, dtype=)`
    folder_marker: str | None = None  # a file only this connector's model folders hold

    def load(self, role: str) -> Any:
        """The object named by `role` (`build_trainer`, `export` or `predictor`), imported now."""
        module, _, attribute = getattr(self, role).partition(":")
        return getattr(importlib.import_module(module), attribute)


CONNECTORS: dict[str, Connector] = {
    "llava": Connector("viral.train:build_llava_trainer", "viral.train:export_llava", "viral.infer:Predictor"),
    "vlora": Connector("viral.vlora.train:build_vlora_trainer", "viral.vlora.train:export_vlora",
                       "viral.vlora.predict:VLoRAPredictor", folder_marker="vlora_generator.safetensors"),
}


def get_connector(name: str) -> Connector:
    """The registered connector `name`; a ConfigError lists the known ones."""
    if name not in CONNECTORS:
        raise ConfigError(f"model.connector is {name!r}; choose one of {sorted(CONNECTORS)}")
    return CONNECTORS[name]


def connector_of_folder(model_path: str | Path) -> str:
    """The connector that wrote `model_path` (a hub id or plain llava-hf folder is `llava`)."""
    for name, connector in CONNECTORS.items():
        if connector.folder_marker and (Path(model_path) / connector.folder_marker).is_file():
            return name
    return "llava"
