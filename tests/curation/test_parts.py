"""The curation's pieces on inputs with known answers."""

import numpy as np
import pytest

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.curation.balance import balance_weights, kmeans
from megatron_moviegen.curation.config import ShotConfig, load_curation_config
from megatron_moviegen.curation.dedup import duplicate_of
from megatron_moviegen.curation.filters import border_fraction, load_scorer, sharpness
from megatron_moviegen.curation.shots import clip_windows


def test_shots_become_trimmed_clips_of_min_to_max_seconds():
    shots = ShotConfig(trim_s=0.5, min_s=4.0, max_s=16.0)
    assert clip_windows((10.0, 14.0), shots) == []  # 3 s after trimming
    assert clip_windows((10.0, 15.0), shots) == [(10.5, 14.5)]
    assert clip_windows((0.0, 41.0), shots) == [(0.5, 13.8333), (13.8333, 27.1667), (27.1667, 40.5)]


def test_border_fraction_measures_letterbox_and_pillarbox():
    frames = np.full((2, 100, 200, 3), 128, np.uint8)
    assert border_fraction(frames) == 0.0
    frames[:, :12], frames[:, -13:] = 0, 10
    assert border_fraction(frames) == pytest.approx(0.25)
    frames[:, :, :80] = 0  # pillarbox wider than the letterbox
    assert border_fraction(frames) == pytest.approx(0.4)


def test_blur_lowers_sharpness():
    import cv2

    frame = (np.random.default_rng(0).random((1, 64, 64, 3)) * 255).astype(np.uint8)
    assert sharpness(np.stack([cv2.GaussianBlur(frame[0], (0, 0), 2)])) < sharpness(frame) / 10


def test_duplicates_match_only_earlier_kept_originals():
    a, b = "ffff0000ffff0000", "0000ffff0000ffff"
    near_a = "ffff0000ffff0001"  # 1 bit off
    hashes = [[a], [near_a], [b], [near_a], [a]]
    keep = [True, True, True, False, True]
    assert duplicate_of(hashes, keep, max_distance=2) == [None, 0, None, None, 0]
    assert duplicate_of(hashes, [False, True, True, True, True], max_distance=2) == [None, None, None, 1, 1]


def test_balance_raises_rare_clusters_and_lowers_common_ones():
    rng = np.random.default_rng(0)
    common, rare = rng.normal(0, 0.01, (9, 4)), rng.normal(5, 0.01, (3, 4))
    labels = kmeans(np.concatenate([common, rare]), k=2, seed=0)
    assert len(set(labels[:9])) == 1 and len(set(labels[9:])) == 1 and labels[0] != labels[9]
    weights = balance_weights(labels, power=1.0)  # sizes 9 and 3, mean 6: 6/9 and 6/3 (already mean 1)
    assert weights[:9] == pytest.approx([2 / 3] * 9) and weights[9:] == pytest.approx([2.0] * 3)


def test_stages_must_get_stricter():
    config = load_curation_config("small")
    assert config.stage_thresholds()["sharp"].min_sharpness == 300.0
    with pytest.raises(ConfigError, match=r"stages\[1\].stricter.max_text: got 0.5, looser than the previous"):
        load_curation_config("small", ["stages=[{name: a}, {name: b, stricter: {max_text: 0.5}}]"])
    with pytest.raises(ConfigError, match=r"stricter.max_duplicate_distance: got 2.0, looser than the previous stage's 6"):
        load_curation_config("small", ["stages=[{name: a, stricter: {max_duplicate_distance: 2}}]"])
    with pytest.raises(ConfigError, match="stricter.max_txt: not a threshold"):
        load_curation_config("small", ["stages=[{name: a, stricter: {max_txt: 0.0}}]"])


def test_the_aesthetic_scorer_is_a_plug_in_named_by_its_import_path():
    assert load_scorer(None) is None
    assert load_scorer("numpy:mean")(np.full((2, 4, 4, 3), 7, np.uint8)) == 7.0
    with pytest.raises(ConfigError, match="analysis.aesthetic: cannot import 'no_such_module:score'"):
        load_scorer("no_such_module:score")
