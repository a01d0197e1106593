"""Collaborative models: SASRec, the source of the collaborative vectors and a baseline."""
