"""docs/kinds.md's "add a model kind", exercised: a kind registered from this file (no package file edited) is
checked when its recipe loads, trains a step through the shared loop, is recorded in its export, and is sampled by
`generate` from that export."""

from pathlib import Path

from megatron_moviegen.kinds.t2v import check_video_recipe
from tests.harness import run_distributed


def _walk(rank, world_size, shards, root):
    import torch

    from megatron_moviegen import kinds
    from megatron_moviegen.checkpoints.export import export_training_checkpoint, read_exported_config
    from megatron_moviegen.generate import main as generate
    from megatron_moviegen.parallel.initialize import destroy
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.training.pretrain import pretrain

    checked = []

    def check(cfg):  # the kind's own rule on top of the video checks
        check_video_recipe(cfg)
        checked.append(cfg.name)

    kinds.register(kinds.Kind("walkthrough", "a kind added from a test", None, check, lambda args, cfg: {}))
    root = Path(root)
    cfg = load_config("tiny", [f"data.shards={shards}", f"train.checkpoint_dir={root / 'ckpt'}", "train.steps=1",
                               "train.global_batch_size=2", "train.progress_bar=false", "data.image_fraction=0.0",
                               "kind=walkthrough"])
    result = pretrain(cfg)
    destroy()
    export_training_checkpoint(root / "ckpt" / "iter_0000001", root / "export", dtype=torch.float32)
    destroy()
    exported = read_exported_config(root / "export")
    code = generate(["--checkpoint", str(root / "export"), "--tae", "toy-tae", "--text-encoders", "toy",
                     "--prompt", "a cat", "--frames", "8", "--height", "64", "--width", "64", "--steps", "2",
                     "--output-dir", str(root / "videos")])
    return {"checked": checked, "steps": [row["step"] for row in result.history], "kind": exported.kind,
            "code": code, "videos": sorted(p.name for p in (root / "videos").iterdir())}


def test_a_kind_added_from_a_test_trains_exports_and_samples(tiny_shards, tmp_path):
    walked = run_distributed(_walk, 1, args=(str(tiny_shards), str(tmp_path)))[0]
    assert walked["checked"] and set(walked["checked"]) == {"tiny"}  # its check ran when the recipe loaded
    assert walked["steps"] == [1] and walked["kind"] == "walkthrough" and walked["code"] == 0
    assert any(name.endswith(".mp4") for name in walked["videos"])
