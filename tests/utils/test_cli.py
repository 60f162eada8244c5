import importlib.util
from pathlib import Path

import pytest

from megatron_moviegen import generate, generate_audio, upsample
from megatron_moviegen.utils import cli

REPO = Path(__file__).resolve().parents[2]


def _evaluate_main():
    spec = importlib.util.spec_from_file_location("evaluate_tool", REPO / "tools" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("command", ["generate", "generate-audio", "upsample", "evaluate"])
@pytest.mark.parametrize("value, says", [
    (str(2**64), f"got {2**64}, need an integer in [0, 2**63 - 1 = {cli.MAX_SEED}]"),
    ("-1", f"got -1, need an integer in [0, 2**63 - 1 = {cli.MAX_SEED}]"),
    ("1.5", "got '1.5', need an integer"),
])
def test_a_seed_out_of_range_is_refused_naming_the_option_in_every_command(command, value, says, capsys):
    # was "Overflow when unpacking long long" from torch.manual_seed, after the model loaded, not naming --seed
    parse = {"generate": generate.parse_args, "generate-audio": generate_audio.parse_args,
             "upsample": upsample.parse_args, "evaluate": _evaluate_main()}[command]
    with pytest.raises(SystemExit) as exited:
        parse(["--seed", value])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"error: argument --seed: {says}\n" in err, err


def test_the_largest_seed_a_command_takes_seeds_torch():
    import torch

    assert cli.seed(str(cli.MAX_SEED)) == cli.MAX_SEED
    torch.manual_seed(cli.MAX_SEED + 7)  # prompt 7 of a batch: still within torch's range
