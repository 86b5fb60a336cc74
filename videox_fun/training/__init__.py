"""Training: the generic trainer, the per-family specs and the data layer (``training.data``)."""
