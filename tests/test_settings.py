"""Settings refuse what would silently run the relay some other way than its operator meant."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from relay_core.settings import CONFIG_FILE_ENV
from relay_core.settings import Settings


def _status(env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["status"], env=env)
    return result.exit_code, result.output


def test_a_misspelt_setting_in_the_file_is_an_error_naming_the_closest(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('metrics_tokn = "s3cret"\n')
    code, output = _status({CONFIG_FILE_ENV: str(config)})
    assert code == 1
    assert "unknown setting 'metrics_tokn'; did you mean 'metrics_token'?" in output
    assert "s3cret" not in output

    config.write_text('[oauth]\nrefresh_scope = ""\n')
    code, output = _status({CONFIG_FILE_ENV: str(config)})
    assert code == 1 and "unknown setting oauth.'refresh_scope'" in output


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("RELAY_TIMEZONE", "Mars/Olympus", "setting timezone: unknown time zone 'Mars/Olympus'"),
        ("RELAY_MAX_BODY_BYTES", "-5", "setting max_body_bytes: Input should be greater than or equal to 1"),
        ("RELAY_USAGE_RETENTION_DAYS", "0", "setting usage_retention_days: Input should be greater than"),
        ("RELAY_WARNING_UTILIZATION", "1.5", "setting warning_utilization: Input should be less than or equal to 1"),
    ],
)
def test_out_of_range_settings_are_one_line_errors(name: str, value: str, expected: str, tmp_path: Path) -> None:
    code, output = _status({name: value, "RELAY_DATA_DIR": str(tmp_path)})
    assert code == 2  # invalid input, as click's usage errors
    assert expected in output
    assert len(output.strip().splitlines()) == 1, output
    assert "Traceback" not in output


def test_the_example_values_still_load(tmp_path: Path) -> None:
    assert Settings(timezone="Europe/Berlin", data_dir=tmp_path).timezone == "Europe/Berlin"
