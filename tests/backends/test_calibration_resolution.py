"""Which calibration the gateway starts with: a configured file that does not exist is an error, unless
``await_calibration`` (the model is then served uncalibrated until the file is written and reloaded)."""

import pytest

from gateway.backends.factory import resolve_calibration
from gateway.config import Settings


def test_a_missing_calibration_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.json"):
        resolve_calibration(Settings().replace(calibration=str(tmp_path / "absent.json")))


def test_a_missing_calibration_file_awaited_serves_uncalibrated(tmp_path):
    settings = Settings().replace(calibration=str(tmp_path / "absent.json"), await_calibration=True)
    assert resolve_calibration(settings) is None


def test_an_awaited_file_that_exists_is_loaded(tmp_path):
    path = tmp_path / "calibration.json"
    shipped = resolve_calibration(Settings())
    path.write_text(shipped.to_json())
    assert resolve_calibration(Settings().replace(calibration=str(path), await_calibration=True)) == shipped
