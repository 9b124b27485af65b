"""Parameter declarations: validation, API order, infotext and xyz overrides (pure)."""

import types

import pytest

from lib_omost.params import BOOL, CHOICE, FLOAT, INT, TEXT, Feature, Param, ParamError, override, overrides_of

FEATURE = Feature("demo", "Demo", (
    Param("strength", "Strength", FLOAT, 0.5, minimum=-1, maximum=1),
    Param("steps", "Steps", INT, 4, minimum=1, maximum=50),
    Param("mode", "Mode", CHOICE, "Fast", choices=("Fast", "Slow")),
    Param("note", "Note", TEXT, "", xyz=False),
    Param("flag", "Flag", BOOL, False),
))


def test_api_order_and_defaults_for_missing_trailing_args():
    assert FEATURE.arg_names == ["enabled", "strength", "steps", "mode", "note", "flag"]
    values = FEATURE.values([True, 0.25])
    assert values == {"enabled": True, "strength": 0.25, "steps": 4, "mode": "Fast", "note": "", "flag": False}


def test_bad_args_are_all_named():
    with pytest.raises(ParamError) as e:
        FEATURE.values([True, 3.0, 2.5, "Medium"])
    text = str(e.value)
    assert "Strength: 3 is outside the allowed range -1 to 1" in text
    assert "Steps: expected a whole number" in text
    assert "Mode: 'Medium' is not one of Fast, Slow" in text
    with pytest.raises(ParamError, match="at most 6"):
        FEATURE.values([True] * 7)


def test_infotext_round_trip():
    values = FEATURE.values([True, -0.3, 7, "slow", "a, b: c", True])
    assert values["mode"] == "Slow"
    text = FEATURE.to_infotext(values)
    assert text["Demo"] == "True" and text["Demo Strength"] == "-0.3"
    assert FEATURE.from_infotext(text) == values
    assert FEATURE.to_infotext(FEATURE.values([False])) == {}
    assert FEATURE.from_infotext({})["enabled"] is False


def test_xyz_override_is_per_copy_and_enables():
    p = types.SimpleNamespace()
    cell1, cell2 = types.SimpleNamespace(**vars(p)), types.SimpleNamespace(**vars(p))
    override(cell1, FEATURE, FEATURE.by_name["strength"], "0.75")
    override(cell1, FEATURE, FEATURE.by_name["mode"], "slow")
    override(cell2, FEATURE, FEATURE.by_name["strength"], -1)
    assert overrides_of(cell1) == {"demo.strength": 0.75, "demo.mode": "Slow"}
    assert overrides_of(cell2) == {"demo.strength": -1.0}
    assert overrides_of(p) == {}
    v = FEATURE.values([False], overrides_of(cell1))
    assert v["enabled"] and v["strength"] == 0.75 and v["mode"] == "Slow"
    with pytest.raises(ParamError):
        override(cell1, FEATURE, FEATURE.by_name["steps"], 0)
    assert [p.name for p in FEATURE.xyz_params()] == ["strength", "steps", "mode", "flag"]


def test_declaration_errors():
    with pytest.raises(ValueError):
        Param("x", "X", CHOICE, "c", choices=("a", "b"))
    with pytest.raises(ValueError):
        Feature("f", "F", (Param("x", "X", INT, 1), Param("x", "Y", INT, 1)))
