"""Planning without a GPU: parameter counts and FLOPs of a recipe (built on the meta device), and a closed-form
per-GPU memory estimate for a parallel layout."""
