"""Tuning tasks: templates plus example builders over the training-only views."""
