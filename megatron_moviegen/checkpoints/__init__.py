"""Checkpoints: Megatron distributed checkpoints of a training run (any TP/CP/PP layout, exact resume), the
single-folder export that generation reads, TP/PP (un)sharding of whole tensors, and stage transitions."""
