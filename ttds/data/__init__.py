"""Data layer: readers, preprocessing, leave-one-out split and training-only views."""
