"""An accordion: its declaration, what it contributes to a sampling pass, its WebUI script, and the one
runner every accordion's ``process_before_every_sampling`` goes through:
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
from lib_omost.forge.ui import install_script_ui, register_xyz_axes
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


# ---- the WebUI script of an accordion ------------------------------------------------------------------

def register_feature(feature) -> None:
    """Add the feature's parameters to the X/Y/Z plot, and complete its pasted infotext.

    The infotext holds only values that differ from their defaults, so a paste fills the others in
    (``Feature.complete_pasted``) before the WebUI sets the components.

    The axes are added right away when the plot script is already loaded (the WebUI loads its own scripts/ before extensions,
    and in API-only mode the plot's UI is built before any before_ui callback runs), and again from
    on_before_ui for a plot loaded later; labels already present are not added twice.
    """
    from modules import script_callbacks
    register_xyz_axes([feature])
    script_callbacks.on_before_ui(lambda: register_xyz_axes([feature]))
    script_callbacks.on_infotext_pasted(lambda infotext, params: feature.complete_pasted(params))


class AccordionScript:
    """What every accordion script does, as a mixin: ``class X(AccordionScript, scripts.Script)``.

    Not a ``scripts.Script`` subclass itself, so the WebUI does not register it as a script of its own
    when a script file imports it. Subclasses set ``accordion`` (its feature and what it contributes to a
    pass, run by ``run`` above) and optionally ``build`` (a custom layout).
    """
    accordion = None
    build = None

    @property
    def feature(self):
        return self.accordion.feature

    def title(self):
        return self.feature.title

    def show(self, is_img2img):
        from modules import scripts
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return install_script_ui(self, self.feature, is_img2img, build=self.build)

    def process_before_every_sampling(self, p, *args, **kwargs):
        run(self.accordion, p, args, kwargs)
