"""Parameter declarations: validation, API order, infotext and xyz overrides (pure)."""

import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_omost.params import (BOOL, CHOICE, FALSE_WORDS, FLOAT, INT, TEXT, TRUE_WORDS, Feature, Param, ParamError,
                              override, overrides_of, parse_bool)

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


# --- one boolean parser; messages that name the field and what is allowed (issue 15) ---------------------

TRUE_INPUTS = [True, 1, 1.0, "true", "True", "TRUE", " yes ", "Yes", "on", "ON", "1"]
FALSE_INPUTS = [False, 0, 0.0, "false", "False", "FALSE", "no", "No", "off", "Off", "0", "", "  "]
NOT_BOOLEANS = ["nope", "truee", "2", "-1", "t", "y", "n", 2, -1, 0.5, float("nan"), None, [], {}, [True], "\ud800",
                10 ** 5000, "x" * 200_000]


@pytest.mark.parametrize("value", TRUE_INPUTS)
def test_parse_bool_true(value):
    assert parse_bool(value, "Flag") is True


@pytest.mark.parametrize("value", FALSE_INPUTS)
def test_parse_bool_false(value):
    assert parse_bool(value, "Flag") is False


@pytest.mark.parametrize("value", NOT_BOOLEANS, ids=range(len(NOT_BOOLEANS)))
def test_parse_bool_rejects_everything_else_naming_the_field_and_the_choices(value):
    with pytest.raises(ParamError) as e:
        parse_bool(value, "Flag")
    assert str(e.value).startswith("Flag: ") and "allowed: true or false" in str(e.value)
    assert len(str(e.value)) < 250


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_parse_bool_of_any_text_is_a_known_word_or_a_param_error(text):
    word = text.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        assert parse_bool(text, "Flag") is (word in TRUE_WORDS)
    else:
        with pytest.raises(ParamError, match="^Flag: "):
            parse_bool(text, "Flag")


@pytest.mark.parametrize("value", FALSE_INPUTS)
def test_enable_flag_sent_as_a_false_word_keeps_the_accordion_off(value):
    assert FEATURE.values([value])["enabled"] is False
    assert FEATURE.values([value, 0.25])["enabled"] is False


@pytest.mark.parametrize("value", TRUE_INPUTS)
def test_enable_flag_sent_as_a_true_word_turns_it_on(value):
    assert FEATURE.values([value])["enabled"] is True


def test_a_bad_enable_flag_is_reported_with_the_other_bad_arguments():
    with pytest.raises(ParamError) as e:
        FEATURE.values(["maybe", 3.0])
    assert "Enabled: 'maybe' is not a boolean" in str(e.value) and "Strength: 3 is outside" in str(e.value)


def test_every_boolean_parameter_uses_the_same_parser():
    flag = FEATURE.by_name["flag"]
    for value in TRUE_INPUTS + FALSE_INPUTS:
        assert flag.coerce(value) is parse_bool(value, "x")
    for value in NOT_BOOLEANS:
        with pytest.raises(ParamError, match="^Flag: "):
            flag.coerce(value)
    assert FEATURE.from_infotext({"Demo": "false"})["enabled"] is False       # was "not 'true'": also False
    assert FEATURE.from_infotext({"Demo": "True"})["enabled"] is True
    with pytest.raises(ParamError, match="^Demo: 'maybe'"):
        FEATURE.from_infotext({"Demo": "maybe"})


HOSTILE = [10 ** 400, -10 ** 400, 10 ** 5000, "1e400", "-1e400", "inf", "nan", float("inf"), float("nan"),
           "\ud800", "x" * 200_000, [1, 2], {"a": 1}, None, object()]


@pytest.mark.parametrize("name", ["strength", "steps", "mode", "note", "flag"])
@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_any_value_is_coerced_or_a_short_param_error_naming_the_field(name, value):
    param = FEATURE.by_name[name]
    try:
        param.coerce(value)
    except ParamError as e:
        assert str(e).startswith(f"{param.label}: ") and len(str(e)) < 300
        assert "invalid literal" not in str(e) and "could not convert" not in str(e)
        if param.kind in (FLOAT, INT, CHOICE, BOOL):
            assert "allowed" in str(e) or "outside the allowed range" in str(e) or "one of" in str(e) \
                or "whole number" in str(e) or "expected a number" in str(e)


def test_number_messages_say_what_is_allowed():
    strength, steps = FEATURE.by_name["strength"], FEATURE.by_name["steps"]
    with pytest.raises(ParamError, match=r"^Strength: 'abc' is not a valid float; allowed: -1 to 1$"):
        strength.coerce("abc")
    with pytest.raises(ParamError, match=r"^Strength: 'inf' is not a finite number; allowed: -1 to 1$"):
        strength.coerce("inf")
    with pytest.raises(ParamError, match=r"^Steps: <an integer of about 401 digits> is not a valid int; allowed: "
                                         r"1 to 50$"):
        steps.coerce(10 ** 400)
    with pytest.raises(ParamError, match=r"^Mode: 'xxxx.*\.\.\..*' \(200000 characters\) is not one of Fast, Slow$"):
        FEATURE.by_name["mode"].coerce("x" * 200_000)
