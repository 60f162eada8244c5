"""Argument types the command lines share, so each value is checked once, in one place."""

from __future__ import annotations

import argparse

# torch.manual_seed takes seeds below 2**64; prompt i of a batch uses seed + i, so a seed stays below 2**63.
MAX_SEED = 2**63 - 1


def seed(text: str) -> int:
    """An argparse `type` for --seed: an integer in [0, MAX_SEED] (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}, need an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"got {value}, need an integer in [0, 2**63 - 1 = {MAX_SEED}]")
    return value
