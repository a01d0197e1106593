"""Typed settings of the LM stages; conf/llm/*.yaml mirrors them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ttds.data.config import build_strict


@dataclass
class LLMConfig:
    """Optimisation and schedule of the dynamic and static stages."""

    batch_size: int = 16  # examples per optimizer step and process
    learning_rate: float = 5e-4  # AdamW peak learning rate
    weight_decay: float = 0.0
    warmup_steps: int = 20  # linear warm-up, then linear decay to 10% at the stage's last step
    gradient_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    dynamic_steps: int = 100  # optimizer steps of stage 1 (LM and towers together); 0 skips stage 1
    static_steps: int = 300  # optimizer steps of stage 2 on frozen IDs
    refresh_every: int = 100  # stage 1: every item text is re-embedded with the LM once per N steps, then item IDs follow
    user_refresh_every: int | None = 400  # stage 1: the same for user texts, which are longer and more numerous; None = refresh_every
    refresh_mode: str = "rolling"  # "rolling" re-embeds a 1/N slice every step, "full" every text at once every N steps
    tower_weight: float = 1.0  # stage 1: weight of the towers' own losses
    tower_batch_size: int = 256  # stage 1: entities per tower loss
    align_weight: float = 0.1  # stage 1: weight of the ID-text alignment loss (InfoNCE + MSE)
    align_temperature: float = 0.1  # stage 1: InfoNCE temperature
    align_batch_size: int = 32  # stage 1: entities per alignment loss
    id_init: str = "text"  # "text": an ID token's row starts at the mean word embedding of its entities' texts; "mean": vocabulary mean + noise
    history_labels: bool = False  # also label the history item IDs of prompts that list a history (the method labels the response only)
    user_ids: bool = True  # false: prompts carry no user ID and the tasks that need user IDs are dropped (ablation)
    id_stickiness: float = 0.0  # stage 1 and freeze: an entity keeps its code at a level while its squared distance is at most (1 + this) times the nearest codeword's; 0 = plain nearest codeword (the method)
    suffix_reserve: int = 16  # suffix tokens added beyond the initial table's, so IDs can move in stage 1
    checkpoint_every_n_steps: int = 100  # resumable checkpoint interval
    num_workers: int = 0  # DataLoader worker processes

    def __post_init__(self) -> None:
        positive = ("batch_size", "learning_rate", "refresh_every", "tower_batch_size", "align_batch_size", "align_temperature", "checkpoint_every_n_steps")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"llm.{key}={getattr(self, key)} must be positive.")
        non_negative = ("weight_decay", "warmup_steps", "gradient_clip", "dynamic_steps", "tower_weight", "align_weight", "id_stickiness", "suffix_reserve", "num_workers")
        for key in non_negative:
            if getattr(self, key) < 0:
                hint = " Use 0 for the method's plain nearest codeword." if key == "id_stickiness" else ""
                raise ValueError(f"llm.{key}={getattr(self, key)} must not be negative.{hint}")
        if self.user_refresh_every is not None and self.user_refresh_every <= 0:
            raise ValueError(f"llm.user_refresh_every={self.user_refresh_every} must be positive, or null to use llm.refresh_every.")
        if self.id_init not in ("text", "mean"):
            raise ValueError(f"llm.id_init={self.id_init!r} is invalid; use 'text' or 'mean'.")
        if self.refresh_mode not in ("rolling", "full"):
            raise ValueError(f"llm.refresh_mode={self.refresh_mode!r} is invalid; use 'rolling' or 'full'.")
        if self.static_steps < 1:
            raise ValueError(f"llm.static_steps={self.static_steps} must be at least 1: stage 2 trains on the frozen IDs that are evaluated.")

    def refresh_interval(self, side: str) -> int:
        """Return the number of steps in which every text of ``side`` ("item" or "user") is re-embedded once."""
        if side == "user" and self.user_refresh_every is not None:
            return self.user_refresh_every
        return self.refresh_every


def llm_config_from_dict(values: dict[str, Any]) -> LLMConfig:
    return build_strict(LLMConfig, dict(values), "llm")
