"""The one CLI and the one config: every stage listed with its options, overrides, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from ichkit.cli import STAGES, build_parser, main
from ichkit.config import load_config


def test_help_lists_every_stage_with_its_options():
    out = subprocess.run([sys.executable, "-m", "ichkit", "--help"], capture_output=True, text=True, check=True).stdout
    for stage in STAGES:
        assert f"ichkit {stage} [-h] [--config CONFIG]" in out, stage
    assert "--k K" in out and "--model NAME" in out and "--patients PATIENTS" in out


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_parses_its_help(stage, capsys):
    with pytest.raises(SystemExit) as exc:
        main([stage, "--help"])
    assert exc.value.code == 0
    assert "--work" in capsys.readouterr().out


def test_no_stage_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "STAGE" in capsys.readouterr().out


def test_config_file_and_set_overrides_merge_over_the_default(tmp_path):
    user = tmp_path / "exp.yaml"
    user.write_text(yaml.safe_dump({"folds": {"k": 3}, "prepare": {"windows": {"brain": [35, 90]}}}))
    cfg = load_config(user, ["folds.seed=7", "prepare.cls_size=128"])
    assert cfg["folds"] == {"k": 3, "seed": 7}
    assert cfg["prepare"]["windows"]["brain"] == [35, 90]
    assert cfg["prepare"]["windows"]["bone"] == [600, 2800]  # untouched keys keep their default
    assert cfg["prepare"]["cls_size"] == 128


def test_bad_config_is_a_clear_cli_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["folds", "--config", str(tmp_path / "missing.yaml")])
    assert exc.value.code == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["folds", "--set", "folds.k"])
    assert "expects section.key=value" in capsys.readouterr().err


def test_work_flag_reaches_the_stage(tmp_path, capsys):
    # no table in an empty work folder: the folds stage says what to run first, naming the folder
    rc = main(["folds", "--work", str(tmp_path / "w")])
    assert rc != 0
    err = capsys.readouterr().err
    assert str(tmp_path / "w") in err and "prepare" in err


def test_parser_builds_one_subcommand_per_stage():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "stage")
    assert list(sub.choices) == list(STAGES)


def test_unknown_config_keys_name_the_nearest_valid_one(tmp_path):
    from ichkit.config import ConfigError

    with pytest.raises(ConfigError, match=r"--set folds\.kk=3: unknown config key folds\.kk \(did you mean folds\.k\?\)"):
        load_config(overrides=["folds.kk=3"])
    with pytest.raises(ConfigError, match=r"unknown config key trian \(did you mean train\?\)"):
        load_config(overrides=["trian.seed=1"])
    user = tmp_path / "exp.yaml"
    user.write_text(yaml.safe_dump({"features": {"pixel_sise": 16}}))
    with pytest.raises(ConfigError, match=rf"config file {user}: unknown config key features\.pixel_sise "
                                          r"\(did you mean features\.pixel_size\?\)"):
        load_config(user)
    # the open mappings take the user's names
    cfg = load_config(overrides=["models.lgbm_radiomic.num_leaves=31", "prepare.windows.stroke=[32, 8]"])
    assert cfg["models"] == {"lgbm_radiomic": {"num_leaves": 31}} and cfg["prepare"]["windows"]["stroke"] == [32, 8]


@pytest.mark.parametrize("override, message", [
    ("folds.k=abc", r"folds\.k = the string 'abc' is not an integer \(default: 5\)"),
    ("folds.k=2.5", r"folds\.k = a number \(2\.5\) is not an integer"),
    ("train.use_tuned=maybe", r"train\.use_tuned = the string 'maybe' is not true or false"),
    ("features.blood_hu=[40, x]", r"features\.blood_hu = a list \(\[40, 'x'\]\) is not a list of numbers"),
    ("prepare.windows.brain=[40]", r"prepare\.windows\.brain must be \[centre, width\]"),
    ("folds=3", r"folds must be a mapping of keys"),
])
def test_wrong_types_name_the_key_and_the_value(override, message):
    from ichkit.config import ConfigError

    with pytest.raises(ConfigError, match=rf"--set {override.split('=')[0]}.*" + message):
        load_config(overrides=[override])


def test_a_bad_value_is_one_error_line_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["folds", "--set", "folds.k=abc"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "folds.k = the string 'abc' is not an integer" in err and "Traceback" not in err
    # a stage's own error (here: no table yet) is caught once, in cli.main
    assert main(["train", "--work", str(tmp_path / "w"), "--set", f"paths.folds={tmp_path / 'f.csv'}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ichkit train: error:") and "Traceback" not in err
