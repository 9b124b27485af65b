"""The README is the user's manual: its argument tables must match the parameter declarations."""

import os
import re

import pytest

from lib_omost.features import hidiffusion, omost, refdrop, slothful
from lib_omost.params import markdown_table

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.mark.parametrize("feature", [omost.FEATURE, refdrop.FEATURE, slothful.FEATURE, hidiffusion.FEATURE],
                         ids=lambda f: f.key)
def test_readme_argument_table_is_current(feature):
    text = open(README, encoding="utf8").read()
    match = re.search(rf"<!-- args:{feature.key} -->\n(.*?)\n<!-- /args:{feature.key} -->", text, re.S)
    assert match, f"README lacks the argument table of {feature.title}"
    assert match.group(1) == markdown_table(feature), (
        f"README's {feature.title} table is stale; regenerate it from lib_omost.params.markdown_table")


def test_readme_test_command_is_what_ci_runs():
    text = open(README, encoding="utf8").read()
    ci = open(os.path.join(os.path.dirname(README), ".ci", "run"), encoding="utf8").read()
    assert "bash tests/run.sh" in text and "bash tests/run.sh" in ci
