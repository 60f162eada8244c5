import json
import runpy
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from megatron_moviegen.config.schema import ConfigError, build
from megatron_moviegen.data.config import DataConfig
from megatron_moviegen.models.toy_encoders import TinyTextEncoders, TinyVideoEncoder
from megatron_moviegen.recipes import load_config
from megatron_moviegen.data.loader import LatentLoader
from megatron_moviegen.data.manifest import ManifestFile, read_manifest
import megatron_moviegen.data.preencode as preencode_module
from megatron_moviegen.data.preencode import Preencoder, local_device
from megatron_moviegen.runtime import rank_and_world_from_env
from megatron_moviegen.data.shards import INDEX_DIR, decode_sample, remove_partial_files
from tests.data.conftest import write_garbage, write_png

REPO = Path(__file__).resolve().parents[2]


class Crash(RuntimeError):
    pass


def small_config(**overrides) -> DataConfig:
    data = {"buckets": {"resolution": 128, "durations_s": [1.0, 2.0]}, "shard_size": 2, "encode_batch_size": 2,
            "num_workers": 0, "batch_size": 1, "image_fraction": 0.0}
    data.update(overrides)
    return build(DataConfig, data)


@pytest.fixture(scope="module")
def media(clips, tmp_path_factory) -> Path:
    """bigbuckbunny (16:9), bikes (2.35:1 -> 16:9), a corrupt mp4, carphone (176x144 -> 4:3), a png."""
    folder = tmp_path_factory.mktemp("media")
    for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"):
        shutil.copy(clips / name, folder / name)
    write_garbage(folder / "broken.mp4")
    write_png(folder / "still.png", 120, 160)
    for path in list(folder.iterdir()):
        path.with_suffix(".txt").write_text(f'a video of "{path.stem}"')
    return folder


def preencode(media: Path, out: Path, rank=0, world_size=1, on_prepared=None, **overrides):
    config = small_config(**overrides)
    return Preencoder(config, TinyVideoEncoder(), TinyTextEncoders.for_model(load_config("tiny").model), out, rank=rank, world_size=world_size,
                      on_prepared=on_prepared).run(read_manifest(media))


def read_all(out: Path) -> dict[str, dict]:
    """Every sample of every shard, by key, straight from the tar files."""
    samples = {}
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members = {}
            for m in tar.getmembers():
                key, suffix = m.name.split(".", 1)
                members.setdefault(key, {})[suffix] = tar.extractfile(m).read()
        for key, parts in members.items():
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = parts
    return samples


@pytest.fixture(scope="module")
def encoded(media, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    summary = preencode(media, out)
    assert (summary.encoded, summary.rejected, summary.shards_written) == (4, 1, 3)
    return out


def test_shards_hold_latents_text_and_metadata(encoded, media):
    samples = read_all(encoded)
    assert sorted(samples) == ["000000000", "000000001", "000000003", "000000004"]  # 2 is the corrupt file
    bunny = decode_sample(samples["000000000"])
    # 1280x720 at 25 fps, 5.28 s -> 16:9 bucket of 2 s x 16 = 32 frames at 96x160 -> latents (16, 4, 12, 20)
    assert bunny["meta"]["bucket"] == "32x96x160" and bunny["meta"]["fps"] == 25.0
    assert bunny["latents"].shape == (16, 4, 12, 20) and bunny["latents"].dtype == torch.bfloat16
    assert bunny["meta"]["prompt"] == 'FPS-25 a video of "bigbuckbunny"'
    assert bunny["meta"]["source"] == str(media / "bigbuckbunny.mp4") and len(bunny["meta"]["sha256"]) == 64
    emb, mask = bunny["conditioning"].tokens["ul2"]
    length = len(bunny["meta"]["prompt"])  # the tiny encoders read bytes: the whole prompt, then padding
    assert emb.shape == (80, 32) and mask.tolist() == [True] * length + [False] * (80 - length)
    still = decode_sample(samples["000000004"])
    assert still["meta"]["bucket"] == "1x112x144" and still["latents"].shape == (16, 1, 14, 18)
    # One FPS rule: an image trains on the text that sampling a 1-frame image of its caption encodes.
    from megatron_moviegen.inference.pipeline import MovieGenPipeline, SamplingConfig

    image_sampling = SamplingConfig(num_frames=1, height=112, width=144)
    assert still["meta"]["prompt"] == MovieGenPipeline.text_prompt(still["meta"]["caption"], image_sampling)
    assert bunny["meta"]["prompt"] == MovieGenPipeline.text_prompt(bunny["meta"]["caption"],
                                                                   SamplingConfig(num_frames=32, fps=25))
    assert decode_sample(samples["000000003"])["meta"]["bucket"] == "32x112x144"  # carphone 176x144 -> 4:3


def test_energon_description_and_summary(encoded):
    meta = encoded / ".nv-meta"
    info = json.loads((meta / ".info.json").read_text())
    assert info["shard_counts"] == {"shard-000000.tar": 2, "shard-000001.tar": 1, "shard-000002.tar": 1}
    import yaml

    assert yaml.safe_load((meta / ".info.yaml").read_text())["shard_counts"] == info["shard_counts"]
    assert yaml.safe_load((meta / "dataset.yaml").read_text())["__class__"] == "CrudeWebdataset"
    assert "train" in yaml.safe_load((meta / "split.yaml").read_text())["split_parts"]
    summary = json.loads((encoded / "summary.json").read_text())
    assert summary == {"samples": 4, "rejected": 1, "shards": 3,
                       "per_bucket": {"1x112x144": 1, "32x112x144": 1, "32x96x160": 2},
                       "per_prompt_fps": {"25": 2, "30": 1}}  # bunny and bikes at 25 fps, carphone at 30; no image


def test_corrupt_file_lands_in_rejects(encoded, media):
    rejects = [json.loads(line) for line in (encoded / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1
    assert rejects[0]["path"] == str(media / "broken.mp4") and rejects[0]["index"] == 2
    assert "DecodeError" in rejects[0]["reason"] and "broken.mp4" in rejects[0]["reason"]


def test_loader_reads_back_shapes(encoded):
    loader = LatentLoader(encoded, batch_size=2, image_fraction=0.0, seed=0)
    batch = next(iter(loader))
    assert batch.bucket == "32x96x160" and batch.latents.shape == (2, 16, 4, 12, 20)
    assert {n: tuple(e.shape) for n, (e, _) in batch.conditioning.tokens.items()} == {
        "byt5": (2, 16, 16), "metaclip": (2, 80, 24), "ul2": (2, 80, 32)}
    assert batch.conditioning.tokens["ul2"].mask.dtype == torch.bool and batch.fps.tolist() == [25.0, 25.0]
    assert loader.prompt_fps() == [25, 30]  # every shard's videos, the still image not counted


def test_energon_reads_the_shards(encoded):
    energon = pytest.importorskip("megatron.energon")
    from safetensors.torch import load

    class Encoder(energon.DefaultTaskEncoder):
        @energon.stateless
        def cook(sample):
            return {"key": sample["__key__"], "latents": load(sample["latents.safetensors"])["latents"]}

        cookers = [energon.Cooker(cook)]

        def batch(self, samples):
            return samples

    worker_config = energon.WorkerConfig(rank=0, world_size=1, num_workers=0)
    dataset = energon.get_train_dataset(encoded, batch_size=1, shuffle_buffer_size=None,
                                        max_samples_per_sequence=None, worker_config=worker_config,
                                        task_encoder=Encoder())
    loader = iter(energon.get_loader(dataset))
    seen = {next(loader)[0]["key"] for _ in range(8)}
    assert seen == {"000000000", "000000001", "000000003", "000000004"}


def test_kill_and_resume_gives_the_same_samples(encoded, media, tmp_path):
    def crash_after_three(n):
        if n == 3:  # inside shard 1, after shard 0 was written
            raise Crash()

    with pytest.raises(Crash):
        preencode(media, tmp_path, on_prepared=crash_after_three)
    assert sorted(p.name for p in tmp_path.glob("shard-*.tar")) == ["shard-000000.tar"]
    (tmp_path / ".shard-000001.tar.99999.tmp").write_bytes(b"partial tar of a killed run")
    summary = preencode(media, tmp_path)
    assert (summary.shards_skipped, summary.shards_written, summary.encoded) == (1, 2, 2)
    assert not list(tmp_path.glob(".*tmp*"))
    assert read_all(tmp_path) == read_all(encoded)
    assert (tmp_path / "rejects.jsonl").read_text() == (encoded / "rejects.jsonl").read_text()


def test_ranks_split_shards_and_together_match_one_process(encoded, media, tmp_path):
    first = preencode(media, tmp_path, rank=0, world_size=2)
    assert first.shards_written == 2 and not (tmp_path / "summary.json").exists()  # shard 1 is rank 1's
    second = preencode(media, tmp_path, rank=1, world_size=2)
    assert second.shards_written == 1 and (tmp_path / "summary.json").exists()
    assert read_all(tmp_path) == read_all(encoded)


def test_resume_refuses_a_different_config(encoded, media):
    with pytest.raises(ConfigError, match="shard_size"):
        preencode(media, encoded, shard_size=3)


@pytest.mark.parametrize("requested, env, gpus, expected", [
    ("cuda", {"LOCAL_RANK": "3"}, 8, "cuda:3"),  # torchrun --nproc-per-node 8
    ("cuda", {"SLURM_LOCALID": "5", "SLURM_PROCID": "13"}, 8, "cuda:5"),  # srun, rank 13 = node 1 local 5
    ("cuda", {"LOCAL_RANK": "2", "SLURM_LOCALID": "0"}, 8, "cuda:2"),  # torchrun inside an srun task
    ("cuda", {"SLURM_LOCALID": "6"}, 1, "cuda:0"),  # srun --gpus-per-task=1: the task sees only its GPU
    ("cuda", {}, 8, "cuda:0"),
    ("cuda:7", {"LOCAL_RANK": "3"}, 8, "cuda:7"),  # an explicit index is kept
    ("cpu", {"LOCAL_RANK": "3"}, 0, "cpu"),
])
def test_local_device_gives_each_rank_of_a_node_its_own_gpu(requested, env, gpus, expected):
    assert local_device(requested, env, gpus) == torch.device(expected)


def test_local_device_refuses_more_ranks_than_gpus():
    with pytest.raises(ValueError, match=r"local rank 4 \(LOCAL_RANK / SLURM_LOCALID\), but this process sees 4 GPU\(s\)"):
        local_device("cuda", {"LOCAL_RANK": "4"}, 4)
    with pytest.raises(ValueError, match=r"sees 0 GPU\(s\)"):
        local_device("cuda", {}, 0)


def test_tool_dry_run_reports_buckets_and_rejects(media, tmp_path):
    out = subprocess.run(
        [sys.executable, "tools/preencode_latents.py", "--manifest", str(media), "--out", str(tmp_path / "o"),
         "--dry-run", "--num-workers", "0", "--set", "buckets.resolution=128", "buckets.durations_s=[1,2]"],
        cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["per_bucket"] == {"1x112x144": 1, "32x112x144": 1, "32x96x160": 2}
    assert [r["index"] for r in report["rejected"]] == [2]
    assert not (tmp_path / "o").exists()


def test_decode_worker_processes_give_the_same_shards(encoded, media, tmp_path):
    preencode(media, tmp_path, num_workers=2)
    assert read_all(tmp_path) == read_all(encoded)


def _preencode_on_rank(rank, world_size, media, out):
    assert rank_and_world_from_env() == (rank, world_size)  # the harness sets torchrun's RANK / WORLD_SIZE
    return preencode(media, Path(out), rank=rank, world_size=world_size).shards_written


def test_concurrent_ranks_under_torchrun_env(encoded, media, tmp_path):
    from tests.harness import run_distributed

    assert run_distributed(_preencode_on_rank, world_size=2, args=(media, str(tmp_path))) == [2, 1]
    assert read_all(tmp_path) == read_all(encoded)
    assert json.loads((tmp_path / "summary.json").read_text())["samples"] == 4



TOOL = runpy.run_path(str(REPO / "tools" / "preencode_latents.py"))


@pytest.mark.parametrize("encoders, message", [
    ([], "--tae is required"),
    (["--tae", "toy-conv"], "--text-encoders is required"),
    (["--tae", "conv", "--text-encoders", "toy"], "--tae conv: renamed, use --tae toy-conv"),
    (["--tae", "tiny", "--text-encoders", "toy"], "--tae tiny: renamed, use --tae toy-tae"),
    (["--tae", "toy-tae", "--text-encoders", "tiny"], "--text-encoders tiny: renamed, use --text-encoders toy"),
    (["--tae", "toy-tae", "--text-encoders", "t5"], "--text-encoders: got 't5', expected one of ['paper', 'toy']"),
], ids=["no-tae", "no-text", "old-conv", "old-tiny-tae", "old-tiny-text", "unknown-text"])
def test_tool_refuses_to_encode_without_naming_both_encoders(capsys, encoders, message):
    with pytest.raises(SystemExit) as exit_info:
        TOOL["parse_args"](["--manifest", "m.jsonl", "--out", "o", *encoders])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_tool_dry_run_needs_no_encoders():
    assert TOOL["parse_args"](["--manifest", "m.jsonl", "--out", "o", "--dry-run"]).tae is None


def test_tool_with_the_toy_encoders_writes_what_the_library_writes(encoded, media, tmp_path):
    out = subprocess.run(
        [sys.executable, "tools/preencode_latents.py", "--manifest", str(media), "--out", str(tmp_path),
         "--tae", "toy-conv", "--text-encoders", "toy", "--device", "cpu", "--num-workers", "0",
         "--set", "buckets.resolution=128", "buckets.durations_s=[1.0,2.0]", "shard_size=2", "encode_batch_size=2",
         "batch_size=1", "image_fraction=0.0"],
        cwd=REPO, capture_output=True, text=True, timeout=180,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert read_all(tmp_path) == read_all(encoded)


def test_a_gpu_decoder_decodes_on_the_encoders_gpu(dali_gpu_devices, monkeypatch):
    # The encoders' device comes from local_device (one GPU per rank, or the only GPU a process sees); the decoder
    # follows it rather than LOCAL_RANK, which names a GPU this process may not see.
    from megatron_moviegen.data.preencode import ordered_map

    monkeypatch.setenv("LOCAL_RANK", "2")
    config = build(DataConfig, {"decoder": "dali-gpu", "num_workers": 0})
    assert list(ordered_map(str, [1], config, torch.device("cuda", 6))) == ["1"]
    assert dali_gpu_devices == [6]


def test_a_repeated_manifest_entry_is_a_duplicate_reject_naming_the_first(media, tmp_path):
    bunny, bikes = str(media / "bigbuckbunny.mp4"), str(media / "bikes.mp4")
    lines = [{"path": bunny, "caption": "bunny"}, {"path": bikes, "caption": "bikes"},
             {"path": bunny, "caption": "bunny"}, {"path": f"{media}/../{media.name}/bigbuckbunny.mp4", "caption": "bunny"},
             {"path": bunny, "caption": "another caption"},
             {"path": bunny, "caption": "bunny", "start": 0.5}, {"path": bikes, "caption": "bikes"}]
    manifest = tmp_path / "repeats.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    entries = read_manifest(manifest)
    encoders = (TinyVideoEncoder(), TinyTextEncoders.for_model(load_config("tiny").model))
    _, probed = Preencoder(small_config(), *encoders, tmp_path / "dry").dry_run(entries)
    assert [(r.index, r.kind) for r in probed] == [(2, "duplicate"), (3, "duplicate"), (6, "duplicate")]
    summary = Preencoder(small_config(), *encoders, tmp_path / "o").run(entries)
    assert (summary.encoded, summary.rejected) == (4, 3)
    rejects = [json.loads(line) for line in (tmp_path / "o" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["index"], r["kind"]) for r in rejects] == [(2, "duplicate"), (3, "duplicate"), (6, "duplicate")]
    assert rejects[1]["reason"] == "repeats manifest entry 0 (the same file, clip and caption); each entry is encoded once"
    assert "repeats manifest entry 1 " in rejects[2]["reason"]
    assert sorted(read_all(tmp_path / "o")) == ["000000000", "000000001", "000000004", "000000005"]
    rerun = Preencoder(small_config(), *encoders, tmp_path / "o").run(entries)  # the folder's records still resume
    assert (rerun.shards_skipped, rerun.shards_written) == (4, 0)


def test_a_streamed_manifest_on_two_ranks_killed_and_resumed_gives_the_shards_of_one_fresh_run(tmp_path, monkeypatch):
    images = [write_png(tmp_path / f"{i}.png", 120, 160, seed=i) for i in range(3)]
    lines = [(0, "a"), (1, "b"), (0, "a"), (2, "c"), (1, "another b"), (0, "a"), (2, "d")]  # 2, 5 repeat 0
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"path": images[i].name, "caption": c}) + "\n" for i, c in lines))
    encoders = (TinyVideoEncoder(), TinyTextEncoders.for_model(load_config("tiny").model))
    Preencoder(small_config(), *encoders, tmp_path / "fresh").run(read_manifest(manifest))

    def crash_at_first(n):
        raise Crash()

    split = tmp_path / "split"
    with pytest.raises(Crash):  # rank 1 (shards 1, 3) is killed before writing anything
        Preencoder(small_config(manifest_index_wait_s=0), *encoders, split, rank=1, world_size=2,
                   on_prepared=crash_at_first).run(ManifestFile(manifest))  # reads it whole: no waiting for rank 0
    Preencoder(small_config(), *encoders, split, rank=0, world_size=2).run(ManifestFile(manifest))
    # rank 0 read the manifest whole and left its index: the rerun of rank 1 parses only its own lines
    assert (split / INDEX_DIR / "manifest" / "header.json").exists() and not list(tmp_path.glob(".split.*"))
    (split / ".shard-000003.tar.99999.tmp").write_bytes(b"partial tar of a killed run")
    monkeypatch.setattr(preencode_module, "read_slice", lambda *args: pytest.fail("rank 1 read the manifest whole"))
    summary = Preencoder(small_config(), *encoders, split, rank=1, world_size=2).run(ManifestFile(manifest))
    assert (summary.shards_written, summary.rejected) == (2, 1)  # shard 1 holds the repeat of entry 0 (index 2)
    assert not list(split.glob(".*tmp*"))
    assert read_all(split) == read_all(tmp_path / "fresh")
    for name in ("rejects.jsonl", "summary.json", "preencode.json"):
        assert (split / name).read_text() == (tmp_path / "fresh" / name).read_text()


def test_partial_files_of_the_given_shards_alone_are_removed(tmp_path):
    (tmp_path / INDEX_DIR).mkdir()
    names = [".shard-000001.tar.12.tmp", f"{INDEX_DIR}/.shard-000001.tar.json.12.tmp", ".shard-000011.tar.3.tmp",
             ".shard-000002.tar.7.tmp", f"{INDEX_DIR}/.shard-000002.tar.json.7.tmp", "shard-000001.tar"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    remove_partial_files(tmp_path, [1, 11])
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(names[3:])
