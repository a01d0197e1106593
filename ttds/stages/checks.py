"""Config checks that run before the first stage, so a misspelt key fails in seconds instead of after preprocessing."""

from __future__ import annotations

import string
from pathlib import Path
from types import SimpleNamespace

import yaml
from omegaconf import DictConfig, OmegaConf

from ttds.backbone.config import backbone_config_from_dict
from ttds.data.config import build_strict, check_value_type, closest_hint, dataset_config_from_dict
from ttds.data.readers import check_options
from ttds.embeddings.templates import TextTemplateConfig
from ttds.eval.config import eval_config_from_dict
from ttds.llm.config import llm_config_from_dict
from ttds.models.sasrec_module import SASRecConfig
from ttds.stages.tokenize import semantic_encoder_config
from ttds.tasks.base import TemplateSet, load_templates
from ttds.tasks.registry import TASKS, USER_ID_TASKS, TasksConfig, tasks_config_from_dict
from ttds.tokenizer.artefacts import SIDES
from ttds.tokenizer.towers import tower_config_from_dict
from ttds.training.trainer_config import trainer_config_from_dict

# The keys of conf/train.yaml after composition; a key added with `+` outside these has no reader.
TOP_LEVEL_KEYS = ("stage", "seed", "paths", "dataset", "tokenizer", "backbone", "tasks", "llm", "eval", "trainer")
PATH_KEYS = ("repo_root", "shared_data", "repo_data", "cache_dir", "run_dir")
TOKENIZER_KEYS = ("semantic_encoder", "text", "sasrec", "item", "user")


def check_stage_configs(cfg: DictConfig, stages: list[str]) -> None:
    """Build every typed config that ``stages`` will build, raising the builders' ValueError on an unknown or invalid key.

    Each group is converted as its stage converts it (resolved to plain containers). Groups absent from ``cfg`` are
    skipped. The llm stage's templates file is read and its placeholders are checked against the tasks.
    """
    check_known_keys(cfg)
    if "trainer" in cfg:
        trainer_config_from_dict(_plain(cfg.trainer))

    if "data" in stages and "dataset" in cfg:
        check_options(dataset_config_from_dict(_plain(cfg.dataset)))

    if "tokenize" in stages and "tokenizer" in cfg:
        check_tokenizer_config(_plain(cfg.tokenizer))
        if "semantic_encoder" in cfg.tokenizer and "backbone" in cfg:
            # The tokenize stage resolves `kind: backbone` against the backbone group; this builds it the same way.
            semantic_encoder_config(_plain(cfg.tokenizer.semantic_encoder), SimpleNamespace(cfg=cfg))

    if "llm" in stages:
        check_llm_configs(cfg)

    if "evaluate" in stages and "eval" in cfg:
        eval_config_from_dict(_plain(cfg.eval))


def check_known_keys(cfg: DictConfig) -> None:
    """Reject top-level, ``paths`` and ``tokenizer`` keys that no stage reads, and a ``seed`` that is not an integer.

    Hydra refuses a misspelt key unless it is added with ``+``. These groups have no typed config of their own, so
    without this check such an addition would pass unnoticed.
    """
    _check_names("the run config", cfg.keys(), TOP_LEVEL_KEYS)
    if "paths" in cfg:
        _check_names("paths", cfg.paths.keys(), PATH_KEYS)
    if "tokenizer" in cfg:
        _check_names("tokenizer", cfg.tokenizer.keys(), TOKENIZER_KEYS)
    if "seed" in cfg:
        check_value_type(cfg.seed, int, "seed", 42)


def _check_names(where: str, names, known: tuple[str, ...]) -> None:
    unknown = sorted(set(map(str, names)) - set(known))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; valid keys are {sorted(known)}.{closest_hint(unknown, known)}")


def check_llm_configs(cfg: DictConfig) -> None:
    """Build the llm, backbone and tasks configs of the llm stage and check the templates of the tasks it trains."""
    user_ids = True
    if "llm" in cfg:
        user_ids = llm_config_from_dict(_plain(cfg.llm)).user_ids
    if "backbone" in cfg:
        backbone_config_from_dict(_plain(cfg.backbone))
    if "tasks" in cfg:
        check_task_templates(tasks_config_from_dict(_plain(cfg.tasks)), user_ids)


def check_tokenizer_config(values: dict) -> None:
    """Build the text, SASRec and tower configs of the tokenize stage from the resolved ``tokenizer`` group."""
    if "text" in values:
        build_strict(TextTemplateConfig, values["text"], "tokenizer.text")
    if "sasrec" in values:
        SASRecConfig.from_dict(values["sasrec"])

    for side in SIDES:
        if side in values:
            tower_config_from_dict(values[side], f"tokenizer.{side}")


def check_task_templates(tasks_cfg: TasksConfig, user_ids: bool = True) -> None:
    """Check that every task the llm stage trains has templates and that each template uses only the task's placeholders.

    A task is trained when its mixture weight is above 0, and, with ``user_ids`` false (llm.user_ids), when it
    does not read or write user IDs.
    """
    path = Path(tasks_cfg.templates)
    templates = _read_templates(path)
    for name, spec in tasks_cfg.mixture.items():
        if spec.weight <= 0 or (not user_ids and name in USER_ID_TASKS):
            continue
        if not templates.templates.get(name):
            raise ValueError(
                f"tasks.templates={path}: task {name!r} has weight {spec.weight} in tasks.mixture but no templates; "
                f"add a list under '{name}:' in that file or set tasks.mixture.{name}.weight=0."
            )
        for template in templates.templates[name]:
            _check_placeholders(path, name, template, TASKS[name].fields)


def _read_templates(path: Path) -> TemplateSet:
    if not path.is_file():
        raise ValueError(
            f"tasks.templates={path}: file not found; point it at a templates YAML such as "
            "tasks.templates='${paths.repo_root}/conf/tasks/templates_v1.yaml' (single quotes keep the shell from expanding ${...})."
        )
    try:
        return load_templates(path)
    except yaml.YAMLError as error:
        raise ValueError(f"tasks.templates={path}: invalid YAML: {error}") from error


def _check_placeholders(path: Path, task: str, template: str, allowed: tuple[str, ...]) -> None:
    try:
        used = template_placeholders(template)
    except ValueError as error:
        raise ValueError(
            f"tasks.templates={path}: template {template!r} of task {task!r} is not a valid format string ({error}); "
            "write a literal brace as {{ or }}."
        ) from error

    for placeholder in used:
        if placeholder not in allowed:
            known = ", ".join(f"{{{name}}}" for name in allowed)
            raise ValueError(
                f"tasks.templates={path}: template {template!r} of task {task!r} uses unknown placeholder "
                f"{{{placeholder}}}; task {task!r} fills only {known}."
            )


def template_placeholders(template: str) -> list[str]:
    """List the names of the fields that ``template.format(...)`` reads, in order, e.g. ``history`` for ``{history[0]}``.

    A positional field (``{}`` or ``{0}``) is listed as ``""`` or ``"0"``. Raises ValueError for unbalanced braces.
    """
    names = []
    for _, field_name, format_spec, _ in string.Formatter().parse(template):
        if field_name is None:
            continue
        # str.format looks up only the part before the first attribute or index access.
        names.append(field_name.split(".", 1)[0].split("[", 1)[0])
        if format_spec and "{" in format_spec:
            names += template_placeholders(format_spec)  # a nested field such as {history:{width}}
    return names


def _plain(node: DictConfig) -> dict:
    return OmegaConf.to_container(node, resolve=True)
