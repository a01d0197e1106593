"""Config checks before the first stage: value types in build_strict, the eval group and the task templates."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ttds.backbone.config import backbone_config_from_dict
from ttds.eval.config import EvalConfig, eval_config_from_dict
from ttds.llm.config import llm_config_from_dict
from ttds.paths import CONF_DIR, REPO_ROOT, register_resolvers
from ttds.stages.checks import check_known_keys, check_stage_configs, check_task_templates, template_placeholders
from ttds.tasks.base import Vocabulary
from ttds.tasks.registry import TASKS, TasksConfig, TaskSpec
from ttds.tokenizer.towers import tower_config_from_dict
from ttds.training.trainer_config import TrainerConfig, trainer_config_from_dict

ALL_STAGES = ["data", "tokenize", "llm", "evaluate"]
TIMEOUT_S = 120  # train.py fails in the config checks, measured at about 8 s on 2 busy cores


def compose_train(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=["paths.run_dir=unused", *overrides])


def write_templates(folder: Path, body: str) -> str:
    path = folder / "templates.yaml"
    path.write_text("version: 1\n" + body)
    return str(path)


# Value types in build_strict.


def test_int_field_rejects_string():
    with pytest.raises(ValueError, match=r"^llm\.batch_size='abc' must be an integer; set it to a whole number like 16\.$"):
        llm_config_from_dict({"batch_size": "abc"})


def test_int_field_rejects_float():
    with pytest.raises(ValueError, match=r"llm\.batch_size=1\.5 must be an integer"):
        llm_config_from_dict({"batch_size": 1.5})


def test_int_field_rejects_bool():
    with pytest.raises(ValueError, match=r"llm\.batch_size=True must be an integer"):
        llm_config_from_dict({"batch_size": True})


def test_float_field_rejects_string():
    with pytest.raises(ValueError, match=r"llm\.align_weight='abc' must be a number"):
        llm_config_from_dict({"align_weight": "abc"})


def test_float_field_accepts_int():
    assert llm_config_from_dict({"align_weight": 1}).align_weight == 1


def test_bool_field_rejects_string():
    with pytest.raises(ValueError, match=r"llm\.history_labels='maybe' must be a boolean; set it to true or false\."):
        llm_config_from_dict({"history_labels": "maybe"})


def test_optional_field_accepts_none():
    assert llm_config_from_dict({"user_refresh_every": None}).user_refresh_every is None


def test_optional_field_rejects_string():
    with pytest.raises(ValueError, match=r"llm\.user_refresh_every='often' must be an integer or null"):
        llm_config_from_dict({"user_refresh_every": "often"})


def test_nested_field_names_full_key():
    with pytest.raises(ValueError, match=r"backbone\.lora\.rank='abc' must be an integer"):
        backbone_config_from_dict({"lora": {"rank": "abc"}})


def test_list_elements_are_checked():
    with pytest.raises(ValueError, match=r"tokenizer\.hidden_dims\[1\]='wide' must be an integer"):
        tower_config_from_dict({"hidden_dims": [64, "wide"]})


def test_list_field_rejects_scalar():
    with pytest.raises(ValueError, match=r"backbone\.lora\.target_modules='q_proj' must be a list or null"):
        backbone_config_from_dict({"lora": {"target_modules": "q_proj"}})


def test_stage_checks_name_tower_of_bad_type():
    cfg = compose_train(["tokenizer.item.latent_dim=abc"])

    with pytest.raises(ValueError, match=r"^tokenizer\.item\.latent_dim='abc' must be an integer"):
        check_stage_configs(cfg, ["data", "tokenize"])


def test_bad_type_gives_one_error_line(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    env["OMP_NUM_THREADS"] = "1"
    paths = [f"paths.run_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    command = [sys.executable, str(REPO_ROOT / "train.py"), "experiment=tiny", "stage=llm", *paths, "llm.batch_size=abc"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = result.stdout + result.stderr

    assert result.returncode == 1, output
    assert "error: llm.batch_size='abc' must be an integer" in output
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if "error:" in line]) == 1, output
    assert not (tmp_path / "run" / "data" / "DONE.json").exists()


# The eval group.


def test_eval_config_mirrors_shipped_yaml():
    values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "eval" / "default.yaml"))

    assert eval_config_from_dict(values) == EvalConfig()


def test_eval_unknown_key_fails_before_training():
    cfg = compose_train(["+eval.bem_width=3"])

    with pytest.raises(ValueError, match=r"eval has unknown keys \['bem_width'\]"):
        check_stage_configs(cfg, ALL_STAGES)


def test_misspelt_key_gets_closest_suggestion():
    cfg = compose_train(["+eval.bem_width=3"])

    with pytest.raises(ValueError, match=r"Did you mean 'beam_width'\?$"):
        check_stage_configs(cfg, ALL_STAGES)


def test_several_misspelt_keys_each_get_a_suggestion():
    with pytest.raises(ValueError, match=r"Did you mean 'batch_size' for 'batch_sise', 'static_steps' for 'statc_steps'\?$"):
        llm_config_from_dict({"batch_sise": 8, "statc_steps": 10})


def test_unrelated_key_gets_no_suggestion():
    with pytest.raises(ValueError) as caught:
        llm_config_from_dict({"zzzz": 1})

    assert "Did you mean" not in str(caught.value)


def test_misspelt_task_gets_suggestion(tmp_path):
    with pytest.raises(ValueError, match=r"Did you mean 'sequential'\?$"):
        TasksConfig(templates=str(tmp_path / "t.yaml"), mixture={"sequental": TaskSpec(), "sequential": TaskSpec()})


def test_eval_checked_only_with_evaluate_stage():
    cfg = compose_train(["+eval.bem_width=3"])

    check_stage_configs(cfg, ["data", "tokenize", "llm"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_users": -1}, r"eval\.max_users=-1 must be at least 1, or null"),
        ({"max_users": 0}, r"eval\.max_users=0 must be at least 1"),
        ({"splits": ["tset"]}, r"eval\.splits=\['tset'\] has unknown splits \['tset'\]"),
        ({"splits": []}, r"eval\.splits=\[\] is empty"),
        ({"splits": ["test", "test"]}, r"eval\.splits=\['test', 'test'\] repeats a split"),
        ({"batch_size": 0}, r"eval\.batch_size=0 must be at least 1"),
        ({"top_k": [0]}, r"eval\.top_k=\[0\] must be a non-empty list of positive cutoffs"),
        ({"top_k": []}, r"eval\.top_k=\[\] must be a non-empty list"),
        ({"beam_width": 5}, r"eval\.beam_width=5 is below max\(eval\.top_k\)=10"),
        ({"beam_width": 0}, r"eval\.beam_width=0 must be at least 1"),
        ({"top_k": ["5"]}, r"eval\.top_k\[0\]='5' must be an integer"),
        ({"exclude_history": "no"}, r"eval\.exclude_history='no' must be a boolean"),
    ],
)
def test_eval_bad_value_is_rejected(values, message):
    with pytest.raises(ValueError, match=message):
        eval_config_from_dict(values)


def test_eval_max_users_accepts_null():
    assert eval_config_from_dict({"max_users": None}).max_users is None


# Task templates.


def test_missing_templates_file_names_key_and_fix(tmp_path):
    missing = tmp_path / "nope.yaml"
    cfg = compose_train([f"tasks.templates={missing}"])

    with pytest.raises(ValueError) as error:
        check_stage_configs(cfg, ALL_STAGES)
    assert f"tasks.templates={missing}: file not found" in str(error.value)
    assert "tasks.templates='${paths.repo_root}/conf/tasks/templates_v1.yaml'" in str(error.value)


def test_misspelt_placeholder_is_rejected(tmp_path):
    path = write_templates(tmp_path, 'sequential:\n  - prompt: "User {user} saw {histroy}."\n')
    cfg = TasksConfig(templates=path)

    with pytest.raises(ValueError) as error:
        check_task_templates(cfg)
    message = str(error.value)
    assert f"tasks.templates={path}" in message
    assert "'User {user} saw {histroy}.'" in message
    assert "unknown placeholder {histroy}" in message
    assert "task 'sequential' fills only {user}, {history}, {history_titles}" in message


def test_positional_placeholder_is_rejected(tmp_path):
    path = write_templates(tmp_path, 'sequential:\n  - prompt: "User {} saw {history}."\n')

    with pytest.raises(ValueError, match=r"unknown placeholder \{\}"):
        check_task_templates(TasksConfig(templates=path))


def test_unbalanced_brace_is_rejected(tmp_path):
    path = write_templates(tmp_path, 'sequential:\n  - prompt: "User {user saw {history}."\n')

    with pytest.raises(ValueError, match=r"is not a valid format string"):
        check_task_templates(TasksConfig(templates=path))


def test_weighted_task_without_templates_is_rejected(tmp_path):
    path = write_templates(tmp_path, 'sequential:\n  - prompt: "{history}"\n')
    cfg = TasksConfig(templates=path, mixture={"sequential": TaskSpec(1.0), "item_to_id": TaskSpec(0.2)})

    with pytest.raises(ValueError, match=r"task 'item_to_id' has weight 0\.2 in tasks\.mixture but no templates"):
        check_task_templates(cfg)


def test_unweighted_task_needs_no_templates(tmp_path):
    path = write_templates(tmp_path, 'sequential:\n  - prompt: "{history}"\n')
    cfg = TasksConfig(templates=path, mixture={"sequential": TaskSpec(1.0), "item_to_id": TaskSpec(0.0)})

    check_task_templates(cfg)


def test_user_id_tasks_skipped_without_user_ids(tmp_path):
    path = write_templates(tmp_path, 'sequential:\n  - prompt: "{history}"\n')
    cfg = TasksConfig(templates=path, mixture={"sequential": TaskSpec(1.0), "user_to_text": TaskSpec(0.1)})

    check_task_templates(cfg, user_ids=False)
    with pytest.raises(ValueError, match="user_to_text"):
        check_task_templates(cfg, user_ids=True)


@pytest.mark.parametrize("name", ["templates_v1.yaml", "templates_v2.yaml"])
def test_shipped_templates_pass(name):
    check_task_templates(TasksConfig(templates=str(CONF_DIR / "tasks" / name), mixture={task: TaskSpec(1.0) for task in TASKS}))


def test_template_placeholders_strip_access():
    assert template_placeholders("{a} {b[0]} {c.x:>{d}} {{e}}") == ["a", "b", "c", "d"]


def test_task_fields_are_filled_by_render():
    vocab = Vocabulary(
        item_ids=["<a_1>", "<a_2>"],
        user_ids=["<ua_1>", "<ua_2>"],
        item_titles=["A", "B"],
        item_texts=["a", "b"],
        user_texts=["u", "v"],
    )
    records = {
        "sequential": (0, [0, 1], 1),
        "titles_to_next_id": (0, [0, 1], 1),
        "ids_to_next_title": (0, [0, 1], 1),
        "item_to_id": (0,),
        "id_to_title": (0,),
        "user_to_text": (0,),
        "text_to_user": (0,),
        "item_to_user": (0, [0], 1),
        "item_to_items": (0, [1]),
        "user_to_users": (0, [1]),
    }
    assert set(records) == set(TASKS)
    for name, task in TASKS.items():
        template = " ".join(f"{{{field}}}" for field in task.fields)
        prompt, _ = task.render(records[name], vocab, template)  # raises KeyError for a field that render does not fill
        assert "{" not in prompt, name


# Keys without a typed config of their own: top level, paths, tokenizer, trainer.


def test_unknown_top_level_key_is_rejected():
    cfg = compose_train(["+sed=1"])

    with pytest.raises(ValueError, match=r"the run config has unknown keys \['sed'\].*Did you mean 'seed'\?$"):
        check_stage_configs(cfg, ALL_STAGES)


def test_unknown_paths_key_is_rejected():
    cfg = compose_train(["+paths.cache=x"])

    with pytest.raises(ValueError, match=r"paths has unknown keys \['cache'\]"):
        check_stage_configs(cfg, ["data"])


def test_unknown_tokenizer_group_is_rejected():
    cfg = compose_train(["+tokenizer.sasrc.epochs=1"])

    with pytest.raises(ValueError, match=r"tokenizer has unknown keys \['sasrc'\].*Did you mean 'sasrec'\?$"):
        check_stage_configs(cfg, ["data"])


def test_seed_must_be_an_integer():
    cfg = compose_train(["seed=abc"])

    with pytest.raises(ValueError, match=r"^seed='abc' must be an integer"):
        check_stage_configs(cfg, ["data"])


def test_unknown_trainer_key_is_rejected():
    cfg = compose_train(["+trainer.max_epoch=3"])

    with pytest.raises(ValueError, match=r"trainer has unknown keys \['max_epoch'\].*Did you mean 'max_epochs'\?$"):
        check_stage_configs(cfg, ["data"])


def test_unknown_accelerator_is_rejected():
    with pytest.raises(ValueError, match=r"trainer.accelerator='gpus' is unknown.*Did you mean 'gpu'\?$"):
        trainer_config_from_dict({"accelerator": "gpus"})


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match=r"trainer.precision='bf16' is unknown.*Did you mean 'bf16-true'"):
        trainer_config_from_dict({"precision": "bf16"})


def test_zero_devices_are_rejected():
    with pytest.raises(ValueError, match=r"^trainer.devices=0 must be at least 1\.$"):
        trainer_config_from_dict({"devices": 0})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_gpu_trainer_without_cuda_is_rejected_before_training():
    cfg = compose_train(["trainer=gpu"])

    with pytest.raises(ValueError, match=r"needs a CUDA device, and torch sees none; use trainer=cpu"):
        check_stage_configs(cfg, ["data"])


@pytest.mark.parametrize("name", ["cpu", "gpu", "ddp", "fsdp"])
def test_shipped_trainer_configs_have_known_keys(name):
    values = OmegaConf.to_container(compose_train([f"trainer={name}"]).trainer)

    assert set(values) <= {f.name for f in dataclasses.fields(TrainerConfig)}


def test_shipped_experiments_pass_the_key_checks():
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        cfg = compose_train([f"experiment={path.stem}"])

        check_known_keys(cfg)


def test_option_of_format_without_options_is_rejected():
    cfg = compose_train(["+dataset.options.delimter=x"])

    with pytest.raises(ValueError, match=r"dataset.options has unknown keys \['delimter'\] for format 'movietweetings', which takes no options"):
        check_stage_configs(cfg, ["data"])


def test_misspelt_reader_option_fails_before_the_data_stage():
    cfg = compose_train(["dataset=online_retail", "+dataset.options.delimter=x"])

    with pytest.raises(ValueError, match=r"Did you mean 'delimiter'\?$"):
        check_stage_configs(cfg, ["data"])


def test_dense_history_overlay_settings():
    cfg = compose_train(["experiment=[demo,dense_history]"])

    assert cfg.tasks.templates.endswith("conf/tasks/templates_v2.yaml")
    assert cfg.llm.history_labels is True
    check_stage_configs(cfg, ALL_STAGES)


def test_sticky_ids_overlay_settings():
    cfg = compose_train(["experiment=[demo,sticky_ids]"])

    assert cfg.llm.id_stickiness == 1.0
    assert cfg.llm.dynamic_steps > 0
    check_stage_configs(cfg, ALL_STAGES)


def test_negative_id_stickiness_is_rejected():
    cfg = compose_train(["llm.id_stickiness=-1"])

    with pytest.raises(ValueError, match=r"llm.id_stickiness=-1(\.0)? must not be negative\. Use 0 for the method's plain nearest codeword\."):
        check_stage_configs(cfg, ALL_STAGES)


def test_semantic_encoder_key_checked_early():
    cfg = compose_train(["+tokenizer.semantic_encoder.modle=x"])

    with pytest.raises(ValueError, match=r"tokenizer.semantic_encoder has unknown keys \['modle'\]"):
        check_stage_configs(cfg, ALL_STAGES)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_float_setting_rejects_non_finite(value):
    cfg = compose_train([f"llm.learning_rate={value}"])

    with pytest.raises(ValueError, match=r"^llm.learning_rate=\S+ must be a finite number"):
        check_stage_configs(cfg, ALL_STAGES)


# Seeds: `seed=k` varies the tokenize stage too, so a benchmark's seeds cover the towers and SASRec.


def test_tokenizer_seeds_follow_run_seed():
    cfg = OmegaConf.to_container(compose_train(["seed=7"]).tokenizer, resolve=True)

    assert cfg["sasrec"]["seed"] == 7
    assert cfg["item"]["seed"] == 7
    assert cfg["item"]["quantizer"]["seed"] == 7
    assert cfg["user"]["seed"] == 7
    assert cfg["user"]["quantizer"]["seed"] == 7


def test_tokenizer_seed_pinned():
    cfg = compose_train(["seed=7", "tokenizer.item.seed=0"])

    assert cfg.tokenizer.item.seed == 0
    assert cfg.tokenizer.user.seed == 7
