"""Evaluation: TAE ceiling and generated-vs-reference numbers on real clips, the JSON report and the PNG."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from megatron_moviegen.data.bundled import CAPTIONS, bundled_clips_dir
from tests.harness import run_distributed
from tests.inference.jobs import make_tiny_export

CLIPS = ("bigbuckbunny.mp4", "carphone_pristine.mp4")


def _evaluate_job(rank, world_size, root):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    from evaluate import main

    root = Path(root)
    make_tiny_export(root / "export")
    from megatron_moviegen.parallel.initialize import destroy

    destroy()
    from megatron_moviegen.utils.distribution import save_tiny_videomae
    from tests.utils.test_distribution import save_tiny_clip

    return main(["--manifest", str(root / "manifest.jsonl"), "--config", "tiny", "--tae", "toy-tae",
                 "--checkpoint", str(root / "export"), "--text-encoders", "toy", "--steps", "2",
                 "--fvd-model", str(save_tiny_videomae(root / "videomae")), "--clip-model",
                 str(save_tiny_clip(root / "clip")),
                 "--out", str(root / "eval"), 'data.buckets.aspect_ratios=["1:1"]',
                 "data.buckets.include_images=false", "data.image_fraction=0.0"])


def test_report_holds_the_tae_ceiling_and_generated_vs_own_and_other_clip(tmp_path):
    clips = bundled_clips_dir()
    (tmp_path / "manifest.jsonl").write_text(
        "".join(json.dumps({"path": str(clips / n), "caption": CAPTIONS[n]}) + "\n" for n in CLIPS))
    returned = run_distributed(_evaluate_job, 1, args=(str(tmp_path),))[0]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["clips"] == returned["clips"]
    rabbit, man = report["clips"]
    assert rabbit["caption"] == CAPTIONS["bigbuckbunny.mp4"] and rabbit["fps"] == 25.0
    assert rabbit["shape"] == man["shape"] == [3, 32, 64, 64]
    for row, other in ((rabbit, man), (man, rabbit)):
        assert 0 < row["tae"]["psnr"] < 40 and -1 <= row["tae"]["ssim"] < 1  # an untrained TAE: a poor ceiling
        assert list(row["generated_vs_others"]) == [other["caption"]]
        assert np.isfinite(row["generated"]["psnr"])
    # FVD and CLIP score through tiny random networks (no real VideoMAE / CLIP here): the code path, not the meaning
    distribution = report["distribution"]
    assert set(distribution["fvd"]) == {"tae", "generated"} and all(v >= 0 for v in distribution["fvd"].values())
    assert set(distribution["clip_score"]) == {"original", "generated"}
    assert all(0 <= v <= 100 for v in distribution["clip_score"].values())
    image = np.asarray(Image.open(tmp_path / "eval" / "side_by_side.png"))
    # 2 clips x (original, tae, generated) rows of 64 px + 2 px gaps; 4 frames of 64 px + gaps across.
    assert image.shape == (6 * 66, 4 * 66, 3)
