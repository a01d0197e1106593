"""Training utilities shared by the Lightning stages: resumable sampling and safe checkpoints."""
