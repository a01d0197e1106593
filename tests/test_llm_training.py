"""LM-stage training: mid-epoch resume, and 2-process DDP on CPU (gloo) against one process with the same global batch."""

import lightning as L
import pytest
import torch

from ttds.backbone import BackboneConfig, PromptCollator, add_id_tokens, apply_lora, load_backbone
from ttds.checkpoint_io import SafetensorsCheckpointIO
from ttds.llm.config import LLMConfig
from ttds.llm.data import PromptDataModule
from ttds.llm.recommender import RecommenderModule, clip_each_group
from ttds.stages.reuse import changed_settings

pytestmark = pytest.mark.slow

TOKENS = [f"<a_{i}>" for i in range(4)] + [f"<b_{i}>" for i in range(4)]
GLOBAL_BATCH = 8
STEPS = 3


class PairDataset(torch.utils.data.Dataset):
    """Fixed (prompt, response) pairs; every response has the same token count so per-rank means average exactly."""

    def __init__(self):
        self.pairs = [(f"user {i} liked item {i % 3} then", f"<a_{i % 4}><b_{(i * 3) % 4}>") for i in range(32)]

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        return self.pairs[index]


def _module_and_data(per_process_batch: int):
    cfg = BackboneConfig(kind="scratch-llama", scratch={"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}, lora={"dropout": 0.0})
    model, tokenizer = load_backbone(cfg, device="cpu")
    ids = add_id_tokens(model, tokenizer, TOKENS, seed=0)
    torch.manual_seed(0)  # LoRA initialisation draws from the global generator
    model = apply_lora(model, tokenizer, cfg.lora, ids)
    llm_cfg = LLMConfig(batch_size=per_process_batch, learning_rate=1e-2, warmup_steps=0, static_steps=STEPS)
    module = RecommenderModule(model, llm_cfg, total_steps=STEPS)
    data = PromptDataModule(PairDataset(), PromptCollator(tokenizer, 64), per_process_batch, seed=5)
    return module, data


def _fit(devices: int, strategy: str, root, max_steps: int = STEPS, save_at: int | None = None, resume_from=None):
    module, data = _module_and_data(GLOBAL_BATCH // devices)
    callbacks = [data.resume_callback]
    if save_at:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=save_at, save_top_k=-1, filename="{step}"))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(save_at),
        default_root_dir=root,
        plugins=[SafetensorsCheckpointIO()],
        callbacks=callbacks,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def test_ddp_two_processes_match_one_process(tmp_path):
    single = _fit(1, "auto", tmp_path / "single")
    ddp = _fit(2, "ddp_spawn", tmp_path / "ddp")

    assert set(single) == set(ddp)
    changed = [name for name in single if not torch.allclose(single[name], ddp[name], atol=1e-5, rtol=1e-4)]
    assert changed == []


def test_ddp_checkpoint_resumes_to_the_same_weights(tmp_path):
    single = _fit(1, "auto", tmp_path / "single")
    _fit(2, "ddp_spawn", tmp_path / "part", max_steps=2, save_at=2)
    checkpoint = tmp_path / "part" / "step=2.ckpt"
    assert checkpoint.is_file()

    resumed = _fit(2, "ddp_spawn", tmp_path / "resumed", resume_from=checkpoint)
    changed = [name for name in single if not torch.allclose(single[name], resumed[name], atol=1e-5, rtol=1e-4)]
    assert changed == []


def test_resume_at_step_6_of_8_matches_uninterrupted(tmp_path):
    # 32 examples / batch 8 = 4 steps per epoch, so step 6 is in the middle of the second epoch.
    full = _fit(1, "auto", tmp_path / "full", max_steps=8)
    _fit(1, "auto", tmp_path / "part", max_steps=6, save_at=6)
    resumed = _fit(1, "auto", tmp_path / "resumed", max_steps=8, resume_from=tmp_path / "part" / "step=6.ckpt")

    changed = [name for name in full if not torch.allclose(full[name], resumed[name], atol=1e-6)]
    assert changed == []


def test_clip_each_group_separately():
    # Stage 1 towers have gradients far larger than the LM, so a global norm would shrink the LM step.
    lm, tower = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([{"params": [lm]}, {"params": [tower]}])
    lm.grad = torch.tensor([0.3, 0.4, 0.0])  # norm 0.5
    tower.grad = torch.tensor([300.0, 400.0, 0.0])  # norm 500

    clip_each_group(optimizer, 1.0)

    assert torch.allclose(lm.grad, torch.tensor([0.3, 0.4, 0.0]))
    assert torch.isclose(tower.grad.norm(), torch.tensor(1.0))


def test_changed_settings_lists_dotted_keys():
    saved = {"llm": {"static_steps": 300, "lora": {"rank": 8}}, "tasks": {"neighbours": 5}}
    current = {"llm": {"static_steps": 50, "lora": {"rank": 8}}, "tasks": {"neighbours": 5}}

    assert changed_settings(saved, current) == ["llm.static_steps: 300 -> 50"]
    assert changed_settings(saved, saved) == []
