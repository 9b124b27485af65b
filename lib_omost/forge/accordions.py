"""The one runner every accordion's ``process_before_every_sampling`` goes through:
read -> validate -> contribute -> install -> infotext -> log.

An accordion is its declaration (``Feature``) and one function: given this pass's ``p``, its validated
values, the model's facts and the WebUI's sampling arguments (x, noise, c, uc), what it contributes to the
pass's plan (``Contribution``). Problems that stop it raise ``DidNotRun``; lesser ones are reported with
``report_problem`` where they are found. The runner installs through the one installer
(``lib_omost.forge.pass_plan``), so an accordion that is off changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lib_omost.forge.generation import (
    add_note,
    did_not_run,
    loaded_model_info,
    read_values,
    report_problem,
    write_infotext,
)
from lib_omost.forge.pass_plan import Parts, install, write_precedence
from lib_omost.params import Feature

log = logging.getLogger("sd-forge-omost")


class DidNotRun(Exception):
    """The accordion cannot run in this pass; the message says why (and what is allowed)."""


@dataclass(frozen=True)
class Contribution:
    """What an accordion does in one pass."""
    parts: Parts | None = None          # its parts of the pass plan (None: it changes nothing)
    infotext: dict | None = None        # the values written to the infotext (None: nothing written)
    extra: dict = field(default_factory=dict)      # further infotext entries
    log: str = ""                       # a console line
    notes: tuple = ()                   # notes added to the infotext after it (already logged once)


@dataclass(frozen=True)
class Accordion:
    feature: Feature
    contribute: Callable[[Any, dict, Any, dict], Contribution]     # (p, values, model info, sampling)


def run(accordion: Accordion, p, args, sampling: dict) -> None:
    """``process_before_every_sampling`` of one accordion (``args``: its UI values; ``sampling``: the
    WebUI's keyword arguments)."""
    feature = accordion.feature
    values = read_values(p, feature, args)
    info = None if values is None else loaded_model_info(p, feature)
    made = Contribution()
    if info is not None:
        try:
            made = accordion.contribute(p, values, info, sampling)
        except DidNotRun as e:
            did_not_run(p, feature, str(e))
    for note in install(p, feature.key, made.parts, info, sampling.get("noise")):
        report_problem(p, feature, note)
    if made.infotext is not None:
        write_infotext(p, feature, made.infotext, made.extra)
    for note in made.notes:
        add_note(p, feature, note)
    write_precedence(p)
    if made.log:
        log.info("%s", made.log)
