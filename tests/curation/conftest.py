import json
from pathlib import Path

import pytest

pytest.importorskip("skvideo")
pytest.importorskip("scenedetect")
pytest.importorskip("rapidocr_onnxruntime")
pytest.importorskip("imagehash")


@pytest.fixture(scope="session")
def footage(tmp_path_factory):
    """The made-up raw footage (curation/synthetic.py): 3 shots with hard cuts and one bad video per filter."""
    from megatron_moviegen.curation.synthetic import write_footage

    return write_footage(tmp_path_factory.mktemp("footage"))


@pytest.fixture(scope="session")
def small_config():
    from megatron_moviegen.curation.config import load_curation_config

    return load_curation_config("small")


@pytest.fixture(scope="session")
def curated(footage, small_config, tmp_path_factory) -> Path:
    """One uninterrupted curation of the footage with the `small` recipe."""
    from megatron_moviegen.curation.pipeline import curate

    out = tmp_path_factory.mktemp("curated")
    curate([footage.folder], out, small_config)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
