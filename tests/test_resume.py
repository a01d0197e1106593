"""Mid-epoch resume through the safetensors checkpoint plugin gives the uninterrupted run's weights."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from ttds.checkpoint_io import SafetensorsCheckpointIO
from ttds.training.resume import SamplerResume
from ttds.training.sampler import ResumableSampler


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=0.05)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _fit(tmp_path, max_steps, ckpt_path=None, save_every=None):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, generator=generator)
    data = TensorDataset(x, x.sum(-1, keepdim=True))
    sampler = ResumableSampler(len(data), batch_size=4, seed=3)
    loader = DataLoader(data, batch_size=4, sampler=sampler)
    callbacks = [SamplerResume(sampler)]
    if save_every:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=save_every, save_top_k=-1, filename="{step}"))
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(save_every),
        plugins=[SafetensorsCheckpointIO()],
        callbacks=callbacks,
        use_distributed_sampler=False,
    )
    module = Regression()
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return module, trainer


def test_resume_mid_epoch_matches_uninterrupted(tmp_path):
    full, _ = _fit(tmp_path / "full", max_steps=8)
    _fit(tmp_path / "part", max_steps=6, save_every=6)
    resumed, trainer = _fit(tmp_path / "resumed", max_steps=8, ckpt_path=tmp_path / "part" / "step=6.ckpt")

    assert trainer.global_step == 8
    for name, value in full.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[name], atol=1e-6), name


def test_resume_across_epoch_boundary_matches(tmp_path):
    # 40 samples / batch 4 = 10 steps per epoch: resume at step 12 of 14, in the second epoch.
    full, _ = _fit(tmp_path / "full", max_steps=14)
    _fit(tmp_path / "part", max_steps=12, save_every=12)
    resumed, _ = _fit(tmp_path / "resumed", max_steps=14, ckpt_path=tmp_path / "part" / "step=12.ckpt")

    for name, value in full.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[name], atol=1e-6), name
