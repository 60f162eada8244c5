import pytest

from megatron_moviegen.config.schema import ConfigError, build
from megatron_moviegen.data.buckets import Assignment, BucketTable, Rejection, bucket_size
from megatron_moviegen.data.config import BucketConfig, DataConfig
from megatron_moviegen.data.decode import MediaInfo


def video(w, h, fps, seconds):
    return MediaInfo(w, h, fps, seconds, False)


@pytest.fixture
def table():
    return BucketTable(BucketConfig())  # the paper's 5 x 5 at 768 px


def test_paper_table_is_5_aspects_by_5_durations_plus_images(table):
    buckets = table.buckets()
    videos = [b for b in buckets if not b.is_image]
    assert len(videos) == 25 and len(buckets) == 30
    assert sorted({b.num_frames for b in videos}) == [64, 112, 160, 208, 256]  # 4..16 s at 16 fps
    for b in buckets:
        assert b.height % 16 == 0 and b.width % 16 == 0
        assert 0.97 < b.height * b.width / 768**2 <= 1  # never more pixels (tokens) than the square bucket
    assert bucket_size(1.0, 768, 16) == (768, 768)
    assert bucket_size(16 / 9, 768, 16) == (576, 1024)
    assert bucket_size(9 / 16, 768, 16) == (1024, 576)
    # Rounding each side to the nearest 16 gave 672x880 (73,920 tokens at 16 s); the nearest ratio within
    # 768^2 pixels is 656x880 (1.341 vs 4/3), and 3:4 is its transpose.
    assert bucket_size(4 / 3, 768, 16) == (656, 880)
    assert bucket_size(3 / 4, 768, 16) == (880, 656)
    assert bucket_size(16 / 9, 256, 16) == (192, 336)


def test_landscape_1080p_goes_to_16_9_longest_fitting_duration(table):
    result = table.assign(video(1920, 1080, 30.0, 20.0))
    assert isinstance(result, Assignment)
    assert (result.bucket.aspect_ratio, result.bucket.num_frames) == ("16:9", 256)
    assert (result.clip.fps, result.clip.height, result.clip.width) == (30.0, 576, 1024)


def test_portrait_goes_to_9_16(table):
    result = table.assign(video(1080, 1920, 24.0, 5.0))
    assert (result.bucket.aspect_ratio, result.bucket.height, result.bucket.width) == ("9:16", 1024, 576)


def test_duration_picks_longest_bucket_the_clip_fills(table):
    # 9.9 s at 16 fps = 158 frames: fills 112 (7 s) but not 160 (10 s).
    assert table.assign(video(1920, 1080, 16.0, 9.9)).bucket.num_frames == 112
    assert table.assign(video(1920, 1080, 16.0, 10.0)).bucket.num_frames == 160


def test_low_fps_is_sampled_at_min_fps(table):
    result = table.assign(video(1920, 1080, 12.0, 5.0))
    assert result.clip.fps == 16.0 and result.bucket.num_frames == 64


def test_max_fps_caps_sampling_rate():
    table = BucketTable(BucketConfig(max_fps=24.0))
    assert table.assign(video(1920, 1080, 60.0, 20.0)).clip.fps == 24.0


def test_window_from_manifest_limits_duration(table):
    result = table.assign(video(1920, 1080, 16.0, 60.0), start_s=10.0, end_s=15.0)
    assert (result.clip.start_s, result.bucket.num_frames) == (10.0, 64)


def test_too_short_is_rejected_with_reason(table):
    result = table.assign(video(1920, 1080, 16.0, 3.0))  # 48 frames at 16 fps; the shortest bucket holds 64
    assert isinstance(result, Rejection)
    assert "too short" in result.reason and "48 frames" in result.reason and "64" in result.reason


def test_bucket_is_a_frame_count_so_higher_fps_needs_less_time(table):
    # 3 s at 30 fps is 90 frames: it fills the 64-frame bucket (2.13 s of video, fps recorded per sample).
    result = table.assign(video(1920, 1080, 30.0, 3.0))
    assert (result.bucket.num_frames, result.clip.fps) == (64, 30.0)


def test_too_small_is_rejected_unless_upscaling_allowed(table):
    result = table.assign(video(640, 480, 30.0, 10.0))
    assert isinstance(result, Rejection) and "too small" in result.reason and "640x480" in result.reason
    relaxed = BucketTable(BucketConfig(max_upscale=2.0)).assign(video(640, 480, 30.0, 10.0))
    assert relaxed.bucket.aspect_ratio == "4:3"


def test_image_gets_one_frame_bucket(table):
    result = table.assign(MediaInfo(1024, 1024, 0.0, 0.0, True))
    assert (result.bucket.num_frames, result.bucket.aspect_ratio, result.bucket.name) == (1, "1:1", "1x768x768")
    no_images = BucketTable(BucketConfig(include_images=False)).assign(MediaInfo(1024, 1024, 0.0, 0.0, True))
    assert isinstance(no_images, Rejection)


@pytest.mark.parametrize("override, field", [
    ({"aspect_ratios": ["16-9"]}, "aspect_ratios"),
    ({"durations_s": [4.0, 4.0]}, "durations_s"),
    ({"max_fps": 8.0}, "max_fps"),
    ({"max_upscale": 0.5}, "max_upscale"),
])
def test_bucket_config_errors_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        build(BucketConfig, override)


def test_data_config_validates_nested_and_own_fields():
    with pytest.raises(ConfigError, match="image_fraction"):
        build(DataConfig, {"image_fraction": 1.5})
    with pytest.raises(ConfigError, match="buckets.resolution"):
        build(DataConfig, {"buckets": {"resolution": 8}})
    with pytest.raises(ConfigError, match="image_fraction"):
        build(DataConfig, {"buckets": {"include_images": False}})


def _sft_table():
    return BucketTable(BucketConfig(durations_s=[16.0], include_images=False, sample_fps=[16.0, 24.0]))


def test_sft_rates_give_16_s_clips_16_fps_and_10_67_to_16_s_clips_24_fps():
    table = _sft_table()  # the paper's SFT: 16 s clips at 16 fps, 10.6-16 s clips at 24 fps; both fill 256 frames
    for seconds, fps in ((20.0, 16.0), (16.0, 16.0), (15.9, 24.0), (12.0, 24.0), (10.7, 24.0)):
        assigned = table.assign(video(1920, 1080, 30.0, seconds))
        assert (assigned.clip.fps, assigned.bucket.num_frames) == (fps, 256), seconds
    assert table.assign(video(1920, 1080, 20.0, 20.0)).clip.fps == 16.0  # a 20 fps source is not sampled above it
    too_short = table.assign(video(1920, 1080, 30.0, 9.0))
    assert isinstance(too_short, Rejection) and "at 24 fps" in too_short.reason


def test_sample_fps_must_be_distinct_positive_rates():
    with pytest.raises(ConfigError, match=r"sample_fps: got \[24.0, 24.0\]"):
        build(BucketConfig, {"sample_fps": [24.0, 24.0]})


def test_sft_recipe_samples_at_16_and_24_fps():
    from megatron_moviegen.recipes import load_config

    buckets = load_config("sft").data.buckets
    assert sorted(buckets.sample_fps) == [16.0, 24.0]
    assert {b.num_frames for b in BucketTable(buckets).buckets()} == {256}
