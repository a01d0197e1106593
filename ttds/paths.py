"""Repository-relative paths and the OmegaConf resolver that conf/train.yaml uses to find them."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

# Editable installs (`pip install -e .`, as `make` does) keep the package inside the repository,
# so the repository root is the package folder's parent.
REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"


def register_resolvers() -> None:
    """Register ``${ttds_repo_root:}`` once per process."""
    if not OmegaConf.has_resolver("ttds_repo_root"):
        OmegaConf.register_new_resolver("ttds_repo_root", lambda: str(REPO_ROOT))
