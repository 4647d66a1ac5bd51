"""Datasets: readers for the two on-disk layouts, augmentation, the DataModule, synthetic data."""
