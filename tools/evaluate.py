"""Evaluate a TAE (and a DiT) on clips with known captions: `python tools/evaluate.py --help` (the command is
megatron_moviegen.kinds.evaluating; each model kind's evaluation is its module in megatron_moviegen/kinds/)."""

from megatron_moviegen.kinds.evaluating import main

if __name__ == "__main__":
    main()
