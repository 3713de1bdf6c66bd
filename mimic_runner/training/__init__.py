"""LightningModules, callbacks and the run driver: glue around the pure functions."""
