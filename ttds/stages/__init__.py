"""Pipeline stages behind `python train.py stage=...`; each reads and writes the run directory."""
