import json
import math

import pytest

from opdwatch.detector.persist import check_settings, decode_float, encode_float, reading
from opdwatch.errors import OpdwatchError


def test_non_finite_floats_round_trip_through_strict_json():
    values = [0.0, -1.5, 1e-300, math.nan, math.inf, -math.inf]
    back = [decode_float(v) for v in json.loads(json.dumps([encode_float(v) for v in values], allow_nan=False))]
    assert [repr(v) for v in back] == [repr(v) for v in values]
    assert decode_float(math.nan) != decode_float(math.nan)  # plain NaN from a pickle is accepted as is
    for bad in ("1.0", "NaN", None, True, [1.0]):
        with pytest.raises(ValueError):
            decode_float(bad)


def test_other_settings_are_named_in_one_line():
    check_settings("detector", {"h": 5.0, "k": 1}, {"h": 5.0, "k": 1.0})  # 1 == 1.0 after a JSON trip
    with pytest.raises(OpdwatchError) as err:
        check_settings("detector", {"h": 5.0, "signals": "a,b"}, {"h": 6.0, "signals": "a,b"})
    assert str(err.value) == "detector state was saved with other settings: h=5.0 (now 6.0)"
    with pytest.raises(OpdwatchError, match="no settings"):
        check_settings("policy", None, {"h": 5.0})


def test_malformed_states_become_one_line_errors():
    with pytest.raises(OpdwatchError) as err, reading("detector"):
        {}["level"]
    assert str(err.value) == "detector state is malformed (KeyError: 'level')"
