"""Upsample an mp4 with a spatial-upsampler export: `python tools/upsample.py VIDEO --checkpoint EXPORT --tae TAE
--height H --width W` (see megatron_moviegen/upsample.py for every option; torchrun for TP/CP sampling)."""

from megatron_moviegen.upsample import main

if __name__ == "__main__":
    main()
