"""inference/components.py: the encoders a model was trained with travel with it (pre-encoding's record, copied into
checkpoints and exports), and paper encoders of the wrong width are refused before any weights load."""

import json

import pytest

from megatron_moviegen.data.bundled import bundled_clips_dir
from megatron_moviegen.data.config import DataConfig
from megatron_moviegen.data.manifest import read_manifest
from megatron_moviegen.data.preencode import Preencoder
from megatron_moviegen.inference.components import default_sources
from megatron_moviegen.models.toy_encoders import TinyTextEncoders, TinyVideoEncoder
from megatron_moviegen.recipes import load_config
from megatron_moviegen.config.schema import build


def test_generation_defaults_to_the_recorded_encoders_and_the_user_still_wins():
    model = load_config("tiny").model
    model.trained_encoders = {"video": {"name": "TAEVideoEncoder", "sha256": "ab", "source": "/runs/tae"},
                              "text": {"name": "TextEncoders", "sha256": "cd", "source": "paper",
                                       "overrides": "ul2.path=/models/ul2\nbyt5.path=/models/byt5"}}
    assert default_sources(None, None, [], model) == ("/runs/tae", "paper", ["ul2.path=/models/ul2",
                                                                               "byt5.path=/models/byt5"])
    assert default_sources("toy-tae", "toy", [], model) == ("toy-tae", "toy", [])
    assert default_sources(None, None, ["ul2.path=/mine"], model)[2] == ["ul2.path=/mine"]
    model.trained_encoders = {}
    with pytest.raises(ValueError, match="--tae: not given, and the export records no TAE"):
        default_sources(None, None, [], model)
    assert default_sources("toy-tae", None, [], model)[1] == "paper"  # nothing recorded: the paper's, as before


def test_pre_encoding_records_where_its_encoders_load_from_and_a_moved_folder_still_resumes(tmp_path):
    clips = bundled_clips_dir()
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": str(clips / "bikes.mp4"), "caption": "bikes"}) + "\n")
    config = build(DataConfig, {"buckets": {"resolution": 64, "aspect_ratios": ["1:1"], "durations_s": [1.0],
                                            "max_upscale": 4.0, "include_images": False},
                                "num_workers": 0, "image_fraction": 0.0})
    text = TinyTextEncoders.for_model(load_config("tiny").model)

    def run(source):
        Preencoder(config, TinyVideoEncoder(), text, tmp_path / "out",
                   encoder_sources={"video": {"source": source}, "text": {"source": "toy"}}).run(
            read_manifest(tmp_path / "m.jsonl"))
        return json.loads((tmp_path / "out" / "preencode.json").read_text())["encoders"]

    encoders = run("/runs/tae")
    assert encoders["video"]["source"] == "/runs/tae" and encoders["text"]["source"] == "toy"
    assert run("/moved/tae")["video"]["name"] == "TinyVideoEncoder"  # same weights, another folder: not refused
