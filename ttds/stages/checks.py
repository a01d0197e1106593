"""Config checks that run before the first stage, so a misspelt key fails in seconds instead of after preprocessing."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from ttds.backbone.config import backbone_config_from_dict
from ttds.data.config import build_strict, dataset_config_from_dict
from ttds.embeddings.templates import TextTemplateConfig
from ttds.llm.config import llm_config_from_dict
from ttds.models.sasrec_module import SASRecConfig
from ttds.tasks.registry import tasks_config_from_dict
from ttds.tokenizer.artefacts import SIDES
from ttds.tokenizer.towers import tower_config_from_dict


def check_stage_configs(cfg: DictConfig, stages: list[str]) -> None:
    """Build every typed config that ``stages`` will build, raising the builders' ValueError on an unknown or invalid key.

    Each group is converted as its stage converts it (resolved to plain containers). Groups absent from ``cfg`` are
    skipped. NOTE: tokenizer.semantic_encoder is not checked here, because the tokenize stage resolves its
    ``kind: backbone`` against the backbone config before building it.
    """
    if "data" in stages and "dataset" in cfg:
        dataset_config_from_dict(_plain(cfg.dataset))

    if "tokenize" in stages and "tokenizer" in cfg:
        check_tokenizer_config(_plain(cfg.tokenizer))

    if "llm" in stages:
        if "llm" in cfg:
            llm_config_from_dict(_plain(cfg.llm))
        if "backbone" in cfg:
            backbone_config_from_dict(_plain(cfg.backbone))
        if "tasks" in cfg:
            tasks_config_from_dict(_plain(cfg.tasks))


def check_tokenizer_config(values: dict) -> None:
    """Build the text, SASRec and tower configs of the tokenize stage from the resolved ``tokenizer`` group."""
    if "text" in values:
        build_strict(TextTemplateConfig, values["text"], "tokenizer.text")
    if "sasrec" in values:
        SASRecConfig.from_dict(values["sasrec"])

    for side in SIDES:
        if side not in values:
            continue
        try:
            tower_config_from_dict(values[side])
        except ValueError as error:
            # The tower builder prefixes its messages with "tokenizer" for both towers, so name the tower here.
            raise ValueError(f"tokenizer.{side}: {error}") from error


def _plain(node: DictConfig) -> dict:
    return OmegaConf.to_container(node, resolve=True)
