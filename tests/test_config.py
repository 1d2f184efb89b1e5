import pytest

from dsv4.cli import main
from dsv4.config import PRESETS, make_config, parse_set_args
from dsv4.errors import UserError


def test_presets_validate():
    for name in PRESETS:
        make_config(name).validate()


def test_overrides_are_coerced_and_validated():
    overrides = ["dim=96", "attn_sink=true", "n_layers=2", "compress_ratios=0,0"]
    cfg = make_config("tiny", **parse_set_args(overrides))
    assert cfg.dim == 96 and cfg.attn_sink is True and cfg.compress_ratios == [0, 0]
    with pytest.raises(UserError, match="unknown model config key"):
        parse_set_args(["nope=1"])
    with pytest.raises(UserError, match="expects int"):
        make_config("tiny", dim="wide")
    with pytest.raises(UserError, match="unknown preset"):
        make_config("gigantic")
    with pytest.raises(UserError, match="--set expects key=value"):
        parse_set_args(["dim"])


def test_cli_bad_preset_is_one_line_exit_2(capsys):
    assert main(["model", "summary", "--preset", "gigantic"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown preset" in err and "Traceback" not in err
