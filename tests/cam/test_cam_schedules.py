from __future__ import annotations

import pytest

from pnoc.cam.schedules import Ramp
from pnoc.errors import ConfigError


def test_ramp_values() -> None:
    ap = Ramp(0.0, 4.0, 0.5)
    assert ap(0.0) == 0.0 and ap(0.25) == pytest.approx(2.0) and ap(0.5) == 4.0 and ap(0.9) == 4.0
    ao = Ramp(0.3, 1.0, 1.0)
    assert ao(0.0) == pytest.approx(0.3) and ao(0.5) == pytest.approx(0.65) and ao(1.0) == 1.0
    assert Ramp(0.0, 2.0, 0.0)(0.0) == 2.0
    assert Ramp.constant(0.7)(0.3) == 0.7
    assert Ramp(1.0, 0.0, 1.0)(0.25) == pytest.approx(0.75)  # decreasing ramps work too


def test_ramp_from_config_and_validation() -> None:
    assert Ramp.from_config({"start": 0, "end": 1}) == Ramp(0.0, 1.0, 1.0)

    class Cfg:
        start, end, until = 0.3, 1.0, 0.5

    assert Ramp.from_config(Cfg()) == Ramp(0.3, 1.0, 0.5)
    with pytest.raises(ConfigError):
        Ramp(0.0, 1.0, 1.5)
    with pytest.raises(ConfigError):
        Ramp.from_config({"start": "x", "end": 1})
