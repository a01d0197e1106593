"""DataModule of rendered task prompts with a resumable, rank-aware sampler."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from ttds.backbone.collate import PromptCollator
from ttds.tasks.registry import PromptDataset
from ttds.training.resume import SamplerResume
from ttds.training.sampler import ResumableSampler


class PromptDataModule(L.LightningDataModule):
    """Serves one epoch of the task mixture at a time; ``resume_callback`` keeps its position in checkpoints."""

    def __init__(self, dataset: PromptDataset, collator: PromptCollator, batch_size: int, seed: int, num_workers: int = 0):
        super().__init__()
        self.dataset = dataset
        self.collator = collator
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.sampler = ResumableSampler(len(dataset), batch_size=batch_size, seed=seed)
        self.resume_callback = SamplerResume(self.sampler, epoch_listeners=[dataset.set_epoch])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            drop_last=True,
        )
