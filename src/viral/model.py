"""Build or load the MLLM as a transformers `LlavaForConditionalGeneration` plus its processor.

Three ways, chosen by `ModelConfig.preset`:
- `compose`: an LLM (any causal LM on the hub or on disk) + a vision tower (CLIP or SigLIP vision
  model) + a fresh projector (`mlp2x_gelu`, or `linear`), vision feature layer -2 with the CLS token
  dropped, as LLaVA-1.5 builds it;
- `llava`: an existing llava-hf checkpoint (or a folder written by `viral train`);
- `tiny`: every part built locally from configs (Llama-architecture LLM, CLIP-architecture vision
  tower, a word-level tokenizer trained on the dataset's own text, a chat template), saved to a
  folder and loaded back through `from_pretrained` - the path a hub id takes. With
  `model.vision_tower_path` the vision tower and image processor come from that folder (a trained
  CLIP vision model, e.g. the ShapesWorld study's stage-0 student) instead of a random tower.

With the `llava` preset, `model.vision_tower_path` swaps the checkpoint's vision tower and image processor for
that folder's (the same architecture, width and patch grid: the projector reads it), e.g. an LLM trained on
text beside a tower trained at the same time.

Presets `qwen2_vl` and `qwen2_5_vl` (and loading any checkpoint of those families) are dispatched to
`viral.families`.

Whatever the LLaVA preset, the result is a plain llava-hf model: `LlavaForConditionalGeneration.from_pretrained`
loads what `save_pretrained` wrote without importing viral.

The `linear` projector is stored in llava-hf's two-layer projector with an identity activation and
`linear_2` initialised to the identity, so the checkpoint stays loadable by plain transformers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from viral.config import ConfigError, ModelConfig
from viral.data.templates import IMAGE_TOKEN, get_template
from viral.families import FAMILIES, checkpoint_model_type, get_family

SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>", IMAGE_TOKEN]
TEMPLATE_WORDS = "USER: ASSISTANT: A chat between a curious human and an artificial intelligence assistant ."


def make_image_processor(name: str, **kwargs):
    """`transformers.<name>(**kwargs)`, or its PIL twin `<name>Pil` where torchvision is not installed.

    Both preprocess alike and save the same config (`AutoImageProcessor` picks the backend on load);
    asking transformers for the torchvision class without torchvision prints a fallback warning in
    every process, which the tiny models' builders would otherwise repeat on every run.
    """
    import transformers
    from transformers.utils import is_torchvision_available

    return getattr(transformers, name if is_torchvision_available() else f"{name}Pil")(**kwargs)


def train_word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `texts` (plus the template words), BOS added at the start of a sequence."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tokenizer.train_from_iterator(list(texts) + [TEMPLATE_WORDS], trainer=trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=2048,
        padding_side="right",
    )


def image_grid(model: LlavaForConditionalGeneration) -> tuple[int, int]:
    """The student's image-token grid (rows, cols): vision image size // patch size."""
    vision = model.config.vision_config
    side = vision.image_size // vision.patch_size
    return side, side


def keeps_cls(model: LlavaForConditionalGeneration) -> bool:
    """Whether the image tokens start with the tower's CLS token (vision_feature_select_strategy "full" on a
    CLIP tower; a SigLIP tower has none)."""
    return (model.config.vision_feature_select_strategy == "full"
            and model.config.vision_config.model_type in ("clip", "clip_vision_model"))


def num_image_tokens(model: LlavaForConditionalGeneration) -> int:
    rows, cols = image_grid(model)
    return rows * cols + int(keeps_cls(model))


def _make_linear_projector(model: LlavaForConditionalGeneration) -> None:
    """Turn llava-hf's two-layer projector into a linear map: identity activation, linear_2 = I."""
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        projector.linear_2.weight.copy_(torch.eye(projector.linear_2.weight.shape[0]))
        if projector.linear_2.bias is not None:
            projector.linear_2.bias.zero_()


def build_processor(image_processor, tokenizer, patch_size: int, template: str,
                    select_strategy: str = "default") -> LlavaProcessor:
    """A llava-hf processor: `<image>` expands to one token per patch (and one for CLS with "full")."""
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=select_strategy,
        num_additional_image_tokens=1,
        chat_template=template,
        image_token=IMAGE_TOKEN,
    )


def build_tiny(texts: list[str], cfg: ModelConfig, out_dir: str | Path) -> Path:
    """Build the tiny preset from configs, save model + processor to `out_dir`, return the folder."""
    out_dir = Path(out_dir)
    tokenizer = train_word_tokenizer(texts)
    torch.manual_seed(cfg.seed)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.hidden_size * 2,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    tower = None
    if cfg.vision_tower_path:
        tower = _load_vision_tower(cfg.vision_tower_path, torch.float32)
        vision_config = tower.config
    else:
        vision_config = CLIPVisionConfig(
            hidden_size=cfg.vision_hidden_size,
            intermediate_size=cfg.vision_hidden_size * 2,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=4,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            projection_dim=cfg.vision_hidden_size,
        )
    grid = vision_config.image_size // vision_config.patch_size
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=grid * grid,
        projector_hidden_act="linear" if cfg.projector_type == "linear" else "gelu",
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
    )
    model = LlavaForConditionalGeneration(config)
    if tower is not None:  # the trained tower's weights, unchanged
        model.model.vision_tower.load_state_dict(tower.state_dict())
    if cfg.projector_type == "linear":
        _make_linear_projector(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    if tower is not None:
        image_processor = AutoImageProcessor.from_pretrained(cfg.vision_tower_path)
    else:
        image_processor = make_image_processor(
            "CLIPImageProcessor", size={"shortest_edge": cfg.image_size},
            crop_size={"height": cfg.image_size, "width": cfg.image_size},
        )
    processor = build_processor(image_processor, tokenizer, vision_config.patch_size, get_template("tiny"),
                                cfg.vision_feature_select_strategy)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _load_vision_tower(vision_id: str, dtype, attn_implementation: str | None = None):
    """A CLIP/SigLIP vision model from a full or vision-only checkpoint (attention as `attn_implementation`,
    None: transformers' default)."""
    from transformers import CLIPVisionModel, SiglipVisionModel

    config = AutoConfig.from_pretrained(vision_id)
    model_type = config.model_type
    classes = {
        "clip": CLIPVisionModel,
        "clip_vision_model": CLIPVisionModel,
        "siglip": SiglipVisionModel,
        "siglip_vision_model": SiglipVisionModel,
    }
    if model_type not in classes:
        raise ConfigError(
            f"model.vision_tower {vision_id!r} has model_type {model_type!r}; supported: {sorted(classes)}"
        )
    return classes[model_type].from_pretrained(vision_id, **_load_kwargs(dtype, attn_implementation))


def _load_kwargs(dtype, attn_implementation: str | None) -> dict:
    """`from_pretrained` keywords: the dtype, and the attention implementation when one is asked for."""
    return {"dtype": dtype, **({"attn_implementation": attn_implementation} if attn_implementation else {})}


def swap_vision_tower(model: LlavaForConditionalGeneration, processor: LlavaProcessor, path: str | Path,
                      attn_implementation: str | None = None) -> None:
    """Put the trained tower in `path` (and its image processor) in place of `model`'s own, in place. The
    projector reads the new tower, so it must be of the same kind, width and patch grid as the old one."""
    tower = _load_vision_tower(str(path), model.dtype, attn_implementation)
    old, new = model.config.vision_config, tower.config

    def shape(config) -> tuple[str, int, int]:
        return config.model_type, config.hidden_size, config.image_size // config.patch_size

    if shape(new) != shape(old):
        raise ConfigError(f"model.vision_tower_path {path}: a {new.model_type} tower {new.hidden_size} wide on a "
                          f"{shape(new)[2]}x{shape(new)[2]} patch grid; the checkpoint's projector reads a "
                          f"{old.model_type} tower {old.hidden_size} wide on {shape(old)[2]}x{shape(old)[2]}")
    model.model.vision_tower = tower
    model.config.vision_config = new
    processor.image_processor = AutoImageProcessor.from_pretrained(str(path))
    processor.patch_size = new.patch_size  # image tokens per image: (image size // patch size) ** 2


def compose(cfg: ModelConfig, dtype=torch.float32) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """LLaVA-1.5 from an LLM + a vision tower + a fresh projector (weights are moved, not copied)."""
    tokenizer = AutoTokenizer.from_pretrained(cfg.llm, use_fast=True)
    llm = AutoModelForCausalLM.from_pretrained(cfg.llm, **_load_kwargs(dtype, cfg.attn_implementation))
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    if len(tokenizer) > llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(len(tokenizer))
    vision = _load_vision_tower(cfg.vision_tower, dtype, cfg.attn_implementation)
    vision_config = vision.config
    grid = vision_config.image_size // vision_config.patch_size
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=llm.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=grid * grid,
        projector_hidden_act="linear" if cfg.projector_type == "linear" else "gelu",
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)),
    )
    with torch.device("meta"):
        # the wrapper's own attention setting is written into the configs it shares with the LLM and the tower
        model = LlavaForConditionalGeneration._from_config(config, **_load_kwargs(dtype, cfg.attn_implementation))
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    model.model.vision_tower = vision
    model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(dtype)
    if cfg.projector_type == "linear":
        _make_linear_projector(model)
    model.generation_config = llm.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = AutoImageProcessor.from_pretrained(cfg.vision_tower)
    processor = build_processor(image_processor, tokenizer, vision_config.patch_size, get_template("vicuna_v1"),
                                cfg.vision_feature_select_strategy)
    if getattr(tokenizer, "chat_template", None):
        processor.chat_template = tokenizer.chat_template
    return model, processor


def load_llava(path: str | Path, dtype=torch.float32, attn_implementation: str | None = None):
    """A llava-hf checkpoint and its processor, through the same `from_pretrained` path as a hub id
    (a checkpoint of another family in `viral.families` loads through its family)."""
    model_type = checkpoint_model_type(path)
    if model_type in FAMILIES:
        return get_family(model_type).load(path, dtype=dtype, attn_implementation=attn_implementation)
    if model_type not in (None, "llava"):
        raise ConfigError(f"{path} holds a {model_type!r} model; viral trains and loads 'llava' and "
                          f"{sorted(FAMILIES)} models (LLaVA-OneVision: see the README's model families)")
    model = LlavaForConditionalGeneration.from_pretrained(str(path), **_load_kwargs(dtype, attn_implementation))
    processor = AutoProcessor.from_pretrained(str(path))
    return model, processor


def corpus_texts(path: str | Path) -> list[str]:
    """All conversation text of a LLaVA JSON/JSONL file (the tiny tokenizer's training corpus)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        records = json.loads(path.read_text())
    texts = []
    for record in records:
        for turn in record.get("conversations", []) if isinstance(record, dict) else []:
            if isinstance(turn, dict) and isinstance(turn.get("value"), str):
                texts.append(turn["value"].replace(IMAGE_TOKEN, " "))
        if isinstance(record, dict) and isinstance(record.get("question"), str):
            texts.append(record["question"])
    return texts


def model_dimensions(cfg: ModelConfig) -> tuple[int, int]:
    """(LLM layers, vision hidden size) from configs alone, without loading any weights."""
    if cfg.preset == "tiny":
        return cfg.num_layers, cfg.vision_hidden_size
    if cfg.preset in FAMILIES:
        return get_family(cfg.preset).dimensions(cfg)
    try:
        if cfg.preset == "llava":
            config = AutoConfig.from_pretrained(cfg.model_path)
            return config.text_config.num_hidden_layers, config.vision_config.hidden_size
        llm = AutoConfig.from_pretrained(cfg.llm)
        vision = AutoConfig.from_pretrained(cfg.vision_tower)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the model's config: {err}") from err
    vision = getattr(vision, "vision_config", vision)
    return llm.num_hidden_layers, vision.hidden_size


def build_model(cfg: ModelConfig, output_dir: str | Path, data_path: str | None = None, dtype=torch.float32):
    """Build or load the MLLM for training as `cfg` says; returns (model, processor)."""
    if cfg.preset in FAMILIES:
        return get_family(cfg.preset).build_model(cfg, dtype=dtype)
    if cfg.preset == "llava":
        model, processor = load_llava(cfg.model_path, dtype=dtype, attn_implementation=cfg.attn_implementation)
        if cfg.vision_tower_path:
            swap_vision_tower(model, processor, cfg.vision_tower_path, cfg.attn_implementation)
        return model, processor
    if cfg.preset == "compose":
        return compose(cfg, dtype=dtype)
    corpus = cfg.tokenizer_corpus or data_path
    if corpus is None:
        raise ConfigError("the tiny preset needs model.tokenizer_corpus or data.path to train its tokenizer on")
    texts = []
    for item in str(corpus).split(","):
        texts += corpus_texts(item)
    tiny_dir = Path(cfg.tiny_dir) if cfg.tiny_dir else Path(output_dir) / "base_model"
    if not (tiny_dir / "config.json").is_file():
        # build aside, then rename into place: with several processes (torchrun) the first complete
        # build wins and every process loads that same folder
        staging = tiny_dir.parent / f".{tiny_dir.name}.staging-{os.getpid()}"
        build_tiny(texts, cfg, staging)
        try:
            os.rename(staging, tiny_dir)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return load_llava(tiny_dir, dtype=dtype, attn_implementation=cfg.attn_implementation)
