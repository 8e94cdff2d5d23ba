"""The guards around ``monai.bundle run``: typo'd keys, yes/no flags, one-line errors."""

from __future__ import annotations

import pytest

from oasis_gen.bundle.checks import check_overrides, override_keys
from oasis_gen.utils.config_values import flag
from oasis_gen.utils.errors import ConfigError, DataError, find_user_error


def test_override_keys_take_the_top_level_of_nested_ids():
    argv = ["--config_file", "a.yaml", "--max_epochs", "3", "--train#trainer#amp", "False", "--x::y=1"]
    assert override_keys(argv) == ["config_file", "max_epochs", "train", "x"]


def test_check_overrides_names_the_typo_and_the_closest_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("max_epochs: 1\nbatch_size: 2\ntrain:\n  trainer: null\n")
    check_overrides(["m", "run", "training", "--config_file", str(config), "--max_epochs", "2", "--train#trainer", "1"])
    check_overrides(["m", "run", "training", "--config_file", f"['{config}']", "--batch_size", "4"])
    with pytest.raises(ConfigError, match="did you mean --batch_size"):
        check_overrides(["m", "run", "training", "--config_file", str(config), "--batch_sise", "4"])
    with pytest.raises(ConfigError, match="no such setting") as err:
        check_overrides(["m", "run", "training", "--config_file", str(config), "--zzz", "4"])
    assert "did you mean" not in str(err.value)
    check_overrides(["python", "-c", "pass"])  # not a bundle command line: nothing to check


@pytest.mark.parametrize(("text", "value"), [("False", False), ("false", False), ("0", False), ("no", False),
                                             ("True", True), ("yes", True), (True, True), ("1", True)])
def test_flags_read_the_ways_people_write_yes_and_no(text, value):
    assert flag(text) is value


def test_flag_refuses_other_text():
    with pytest.raises(ConfigError, match="'progress': expected true or false, not 'maybe'"):
        flag("maybe", "progress")


def test_user_errors_are_found_inside_monai_wrappers():
    try:
        try:
            raise DataError("/x", "dataset folder not found")
        except DataError as inner:
            raise RuntimeError("Failed to instantiate component") from inner
    except RuntimeError as outer:
        assert str(find_user_error(outer)) == "/x: dataset folder not found"
    assert find_user_error(ValueError("plain")) is None
