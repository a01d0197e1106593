"""Reload a run's trained model and frozen ID tables from its directory when they are not in memory."""

from __future__ import annotations

from ttds.backbone.checkpoint import load_adapter_checkpoint
from ttds.stages.context import RunContext
from ttds.tokenizer.artefacts import tables_hash
from ttds.tokenizer.id_table import SemanticIdTable


def load_trained(ctx: RunContext) -> dict:
    """Model, tokenizer and frozen tables of this run; the adapter must match the tables' hash."""
    if "llm" in ctx.artefacts:
        return ctx.artefacts["llm"]

    folder = ctx.run_dir / "llm"
    if not (folder / "adapter").is_dir():
        raise FileNotFoundError(f"{folder / 'adapter'} not found; run `python train.py stage=llm` for this run directory first.")
    tables = {side: SemanticIdTable.load(folder / f"{side}_table") for side in ("item", "user")}
    loaded = load_adapter_checkpoint(folder / "adapter", expected_table_hash=tables_hash(tables["item"], tables["user"]))
    trained = {"model": loaded.model.eval(), "tokenizer": loaded.tokenizer, "tables": tables, "table_hash": loaded.meta["table_hash"]}
    ctx.artefacts["llm"] = trained
    return trained
