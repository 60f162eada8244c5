"""Text to video: `python tools/generate.py --checkpoint EXPORT --tae TAE --prompt "..."` (see
megatron_moviegen/generate.py for every option; torchrun for TP/CP sampling)."""

from megatron_moviegen.generate import main

if __name__ == "__main__":
    main()
