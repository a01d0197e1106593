"""TokenizeOutputs: what the tokenize stage leaves in the run directory, and how later stages read it back."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ttds.tokenizer.id_table import SemanticIdTable
from ttds.tokenizer.towers import DualModalityVAE, tower_config_from_dict

SIDES = ("item", "user")


@dataclass
class TokenizeOutputs:
    """Per side ("item", "user"): texts, semantic and collaborative vectors, the trained tower and its ID table."""

    texts: dict[str, list[str]]
    semantic: dict[str, torch.Tensor]  # (N, d_s)
    collaborative: dict[str, torch.Tensor]  # (N, d_c)
    towers: dict[str, DualModalityVAE]
    tables: dict[str, SemanticIdTable]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"semantic.{side}": self.semantic[side].contiguous() for side in SIDES}
        tensors |= {f"collaborative.{side}": self.collaborative[side].contiguous() for side in SIDES}
        save_file(tensors, folder / "embeddings.safetensors")
        for side in SIDES:
            tower = self.towers[side]
            state = {key: value.detach().cpu().contiguous() for key, value in tower.state_dict().items()}
            save_file(state, folder / f"{side}_tower.safetensors")
            meta = {"config": asdict(tower.config), "semantic_dim": tower.semantic_dim, "collaborative_dim": tower.collaborative_dim}
            (folder / f"{side}_tower.json").write_text(json.dumps(meta, indent=2))
            self.tables[side].save(folder / f"{side}_table")
        (folder / "texts.json").write_text(json.dumps(self.texts, ensure_ascii=False))

    @classmethod
    def load(cls, folder: Path) -> TokenizeOutputs:
        if not (folder / "embeddings.safetensors").is_file():
            raise FileNotFoundError(f"tokenize outputs not found in {folder}; run `python train.py stage=tokenize` for this run directory first.")
        tensors = load_file(folder / "embeddings.safetensors")
        towers = {}
        for side in SIDES:
            meta = json.loads((folder / f"{side}_tower.json").read_text())
            tower = DualModalityVAE(tower_config_from_dict(meta["config"]), meta["semantic_dim"], meta["collaborative_dim"])
            tower.load_state_dict(load_file(folder / f"{side}_tower.safetensors"))
            towers[side] = tower.eval()
        return cls(
            texts=json.loads((folder / "texts.json").read_text()),
            semantic={side: tensors[f"semantic.{side}"] for side in SIDES},
            collaborative={side: tensors[f"collaborative.{side}"] for side in SIDES},
            towers=towers,
            tables={side: SemanticIdTable.load(folder / f"{side}_table") for side in SIDES},
        )



def tables_hash(item_table: SemanticIdTable, user_table: SemanticIdTable) -> str:
    """Hash both frozen tables together, because an adapter is valid only with the exact IDs it was trained on."""
    return hashlib.sha256(f"{item_table.content_hash}:{user_table.content_hash}".encode()).hexdigest()
