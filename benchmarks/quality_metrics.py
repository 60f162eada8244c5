"""Our PSNR / SSIM (utils/quality.py) against torchmetrics' on the same videos: values and time (issue 36 item 6 asked
whether torchmetrics is as exact and faster).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/quality_metrics.py

Videos (3, t, h, w) in [-1, 1]: random frames and a noisy copy (sigma 0.1), data range 2. torchmetrics gets the
frames as its batch, in float64, with the same 11-tap Gaussian window (sigma 1.5); each time is the second call.
With scikit-image installed, its `structural_similarity` (Wang et al.'s parameters: Gaussian weights, sigma 1.5,
population covariance), averaged over every (channel, frame) plane, is printed as the reference.
"""

from __future__ import annotations

import time

import torch


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    fn(*args, **kwargs)  # warm-up
    start = time.perf_counter()
    value = float(fn(*args, **kwargs))
    return value, time.perf_counter() - start


def main() -> None:
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from megatron_moviegen.utils.quality import psnr, ssim

    torch.manual_seed(0)
    print("| video (3, t, h, w) | metric | ours | torchmetrics | difference | ours ms | torchmetrics ms | scikit-image |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for shape in [(3, 16, 64, 64), (3, 8, 256, 256)]:
        a = torch.rand(shape) * 2 - 1
        b = (a + 0.1 * torch.randn(shape)).clamp(-1, 1)
        frames_a, frames_b = a.permute(1, 0, 2, 3).double(), b.permute(1, 0, 2, 3).double()
        rows = [("SSIM", timed(ssim, a, b, data_range=2.0),
                 timed(structural_similarity_index_measure, frames_b, frames_a, data_range=2.0, kernel_size=11,
                       sigma=1.5)),
                ("PSNR", timed(psnr, a, b, data_range=2.0),
                 timed(peak_signal_noise_ratio, frames_b, frames_a, data_range=2.0))]
        reference = {"SSIM": skimage_ssim(a, b), "PSNR": None}
        for name, (ours, ours_s), (theirs, theirs_s) in rows:
            ref = "-" if reference[name] is None else f"{reference[name]:.6f}"
            print(f"| {shape} | {name} | {ours:.6f} | {theirs:.6f} | {abs(ours - theirs):.1e} | {ours_s * 1e3:.1f} | "
                  f"{theirs_s * 1e3:.1f} | {ref} |")


def skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float | None:
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        return None
    planes = [(a[c, t].double().numpy(), b[c, t].double().numpy()) for c in range(a.shape[0]) for t in range(a.shape[1])]
    return sum(structural_similarity(x, y, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False) for x, y in planes) / len(planes)


if __name__ == "__main__":
    main()
