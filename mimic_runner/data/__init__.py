"""Datasets: the HDF5 schema, generators, preparers and the Lightning DataModule."""
