"""The checkpoint-folder protocol both trainers use: the names old runs have, the atomic publish and `latest`, prune
and the previous good step, the run's config beside a step. The trainers' own tests (test_distributed.py,
tests/training/test_tae_checkpoints.py) run it through real saves."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from megatron_moviegen.checkpoints.protocol import (AUTOENCODER_STEPS, CONFIG_FILE, DIT_STEPS, LATEST, latest_name,
                                                    previous_good, prune, publish, read_config, write_config)
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.utils.io import DamagedFileError


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Run:
    name: str = "toy"
    steps: int = 10
    optim: Optim = field(default_factory=Optim)


def _save(checkpoint_dir: Path, steps, step: int, payload: str) -> Path:
    final = checkpoint_dir / steps.name(step)
    partial = steps.start_partial(final)
    (partial / "weights").write_text(payload)
    write_config(partial, Run(steps=step))
    publish(checkpoint_dir, partial, final)
    return final


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_each_trainer_keeps_the_step_names_its_old_runs_have():
    assert DIT_STEPS.name(200) == "iter_0000200" and AUTOENCODER_STEPS.name(200) == "step_000200"
    assert DIT_STEPS.step_of(Path("iter_0000200")) == 200 and AUTOENCODER_STEPS.step_of(Path("step_000200")) == 200
    for other in ("iter_0000200.tmp", ".iter_0000200.deleting", "step_000200", LATEST):
        assert DIT_STEPS.step_of(Path(other)) is None
    assert DIT_STEPS.partial(Path("c/iter_0000200")) == Path("c/iter_0000200.tmp")
    assert AUTOENCODER_STEPS.partial(Path("c/step_000200")) == Path("c/.step_000200.tmp")


@pytest.mark.parametrize("steps", [DIT_STEPS, AUTOENCODER_STEPS], ids=["dit", "autoencoder"])
def test_a_publish_replaces_a_step_whole_and_moves_latest_and_the_next_save_clears_a_killed_ones_partial(
        tmp_path, steps):
    _save(tmp_path, steps, 1, "first")
    killed = steps.start_partial(tmp_path / steps.name(2))  # a save killed before its publish
    (killed / "weights").write_text("half")
    assert latest_name(tmp_path) == steps.name(1)
    again = _save(tmp_path, steps, 1, "again")  # a run pointed back at step 1 saves it once more
    assert (again / "weights").read_text() == "again" and latest_name(tmp_path) == steps.name(1)
    assert _names(tmp_path) == sorted([LATEST, steps.name(1)])  # the killed save's partial is gone, no `.old` left
    assert _names(again) == [CONFIG_FILE, "weights"]


def test_the_config_beside_a_step_loads_back_into_its_dataclass(tmp_path):
    step = _save(tmp_path, DIT_STEPS, 3, "w")
    assert read_config(step, Run) == Run(steps=3)
    (step / CONFIG_FILE).write_text("steps: 3\nwidth: 8\n")
    with pytest.raises(ConfigError, match="unknown field"):
        read_config(step, Run)


def test_latest_that_names_no_step_folder_is_a_damaged_pointer(tmp_path):
    (tmp_path / LATEST).write_text("iter_12")
    with pytest.raises(DamagedFileError, match=r"latest: got 'iter_12', expected a step folder name"):
        latest_name(tmp_path)


def test_prune_keeps_the_newest_latest_protected_and_later_steps_and_none_or_zero_keeps_all(tmp_path):
    for step in (1, 2, 3, 4, 9):
        (tmp_path / AUTOENCODER_STEPS.name(step)).mkdir()
    (tmp_path / LATEST).write_text(AUTOENCODER_STEPS.name(1))
    (tmp_path / ".step_000000.deleting").mkdir()  # a killed run's delete
    assert prune(tmp_path, AUTOENCODER_STEPS, 4, None) == [] and prune(tmp_path, AUTOENCODER_STEPS, 4, 0) == []
    protected = frozenset({(tmp_path / "step_000002").resolve()})
    deleted = prune(tmp_path, AUTOENCODER_STEPS, 4, keep_last=1, protected=protected)
    assert [p.name for p in deleted] == ["step_000003"]
    assert _names(tmp_path) == ["latest", "step_000001", "step_000002", "step_000004", "step_000009"]


def test_previous_good_is_the_newest_earlier_step_without_a_problem(tmp_path):
    for step in (1, 2, 3, 5):
        (tmp_path / DIT_STEPS.name(step)).mkdir()
    damaged = {DIT_STEPS.name(2)}
    problem = lambda folder: "damaged" if folder.name in damaged else None  # noqa: E731
    assert previous_good(tmp_path / DIT_STEPS.name(3), DIT_STEPS, problem) == tmp_path / DIT_STEPS.name(1)
    assert previous_good(tmp_path / DIT_STEPS.name(5), DIT_STEPS, problem) == tmp_path / DIT_STEPS.name(3)
    assert previous_good(tmp_path / DIT_STEPS.name(1), DIT_STEPS, problem) is None
    assert previous_good(tmp_path / "checkpoint", DIT_STEPS, problem) is None
