"""LightningModule of the static stage: LoRA tuning of the LM on rendered task prompts."""

from __future__ import annotations

import logging

import lightning as L
import torch
from torch import Tensor, nn

from ttds.backbone.loss import causal_lm_loss
from ttds.llm.config import LLMConfig

log = logging.getLogger(__name__)


def warmup_then_linear_decay(warmup_steps: int, total_steps: int, floor: float = 0.1):
    """Return a LambdaLR factor: linear warm-up to 1, then linear decay to ``floor`` at ``total_steps``."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 1.0 - (1.0 - floor) * progress

    return factor


def clip_each_group(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Clip the gradient norm of every parameter group to ``max_norm`` on its own.

    Stage 1 optimises the LM and the towers together. The towers' losses are summed reconstruction errors, hundreds
    of times the LM loss, so one global norm would be the towers' and would scale the LM's gradient down with theirs.
    """
    for group in optimizer.param_groups:
        torch.nn.utils.clip_grad_norm_(group["params"], max_norm)


class RecommenderModule(L.LightningModule):
    """Trains only the LoRA weights, the ID-token rows and the head layers that peft marks trainable."""

    def __init__(self, model: nn.Module, cfg: LLMConfig, total_steps: int):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.total_steps = total_steps
        # Checkpoints hold only trainable weights (see on_save_checkpoint); the frozen backbone comes from its folder.
        self.strict_loading = False

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = causal_lm_loss(self.model, batch)  # response tokens + EOS only
        self.log("train/lm_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {name: value for name, value in checkpoint["state_dict"].items() if name in trainable}

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups; the LM's trainable weights form the only group here."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr": self.cfg.learning_rate}]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val:
            clip_each_group(optimizer, float(gradient_clip_val))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.param_groups(), lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_linear_decay(self.cfg.warmup_steps, self.total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
