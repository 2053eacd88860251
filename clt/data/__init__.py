"""Datasets and the augmentations applied to their batches."""
