"""Checkpoints: Megatron distributed checkpoints of a training run (any TP/CP/PP layout, exact resume, retention),
the lock that keeps one run per checkpoint folder, the single-folder export that generation reads, TP/PP
(un)sharding of whole tensors, and stage transitions."""
