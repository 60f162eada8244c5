"""One voice per job: the logging rank prints at INFO, every other rank only errors, and Megatron-Core's loggers
(which list every parameter of every gradient bucket at INFO) speak at WARNING.

    configure_logging(rank, logging_rank=world_size - 1)   # before Megatron is imported
"""

from __future__ import annotations

import logging
import warnings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Warnings Megatron-Core and torch raise on every run of this code base, which a user can do nothing about.
KNOWN_NOISE = (
    "Transformer Engine and Apex are not installed",
    "Apex is not installed",
    "full scope is deprecated",
    "When using sequence parallelism it is recommended to set the environment variable CUDA_DEVICE_MAX_CONNECTIONS",
    r"`torch\.distributed\.\w+` is deprecated",
)


def configure_logging(rank: int, logging_rank: int) -> bool:
    """Set the root and Megatron log levels for this rank; returns whether this rank is the one that prints."""
    speaks = rank == logging_rank
    logging.basicConfig(level=logging.INFO if speaks else logging.ERROR, format=FORMAT, force=True)
    logging.getLogger("megatron").setLevel(logging.WARNING if speaks else logging.ERROR)
    for message in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message)
    if not speaks:
        warnings.simplefilter("ignore")  # the logging rank shows each warning once
    return speaks
