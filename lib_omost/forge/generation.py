"""What every accordion does in ``process_before_every_sampling``: read its values, report problems.

A problem is never a traceback in the UI and never a silent no-op: it goes to the console, to a toast
where Gradio can show one, and to the image's infotext as ``<Title> note``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from lib_omost.forge.webui import UnsupportedModel, model_info
from lib_omost.params import Feature, ParamError, overrides_of
from lib_omost.quoting import shortened

log = logging.getLogger("sd-forge-omost")


def report_problem(p, feature: Feature, message: str) -> None:
    message = shortened(message)        # input is quoted short already; this bounds text from elsewhere
    log.warning("%s: %s", feature.title, message)
    add_note(p, feature, message)
    try:
        import gradio as gr
        gr.Warning(f"{feature.title}: {message}")
    except Exception:   # no Gradio request context (API, tests): the console and infotext carry it
        pass


def add_note(p, feature: Feature, message: str) -> None:
    """``message`` in the infotext's ``<Title> note`` (once), without logging it again."""
    notes = getattr(p, "extra_generation_params", None)
    if notes is not None:
        key = f"{feature.title} note"
        notes[key] = f"{notes[key]}; {message}" if key in notes and message not in notes[key] else message


def clear_infotext(p, feature: Feature) -> None:
    """Drop this accordion's infotext entries: X/Y/Z cells are shallow copies of one p and share its
    extra_generation_params, so a cell with the accordion off would otherwise show the previous cell's."""
    notes = getattr(p, "extra_generation_params", None)
    if notes is None:
        return
    for key in [k for k in notes if k == feature.enabled_key or k.startswith(feature.title + " ")]:
        del notes[key]


def did_not_run(p, feature: Feature, reason: str) -> None:
    """The one rule for an accordion that did not run: its infotext holds only the note saying why (the
    first pass's entries stay when only a hires pass failed)."""
    if not getattr(p, "is_hr_pass", False):
        clear_infotext(p, feature)
    report_problem(p, feature, f"{reason}; {feature.title} did not run")


def read_values(p, feature: Feature, args: Sequence[Any]) -> dict[str, Any] | None:
    """The validated values of this generation (xyz overrides applied), or None after reporting why not.

    Returns None as well when the feature is off, so callers simply ``return`` on None.
    """
    if not getattr(p, "is_hr_pass", False):      # a hires pass keeps what the first pass reported
        clear_infotext(p, feature)
    try:
        values = feature.values(args, overrides_of(p))
    except ParamError as e:
        did_not_run(p, feature, str(e))
        return None
    return values if values["enabled"] else None


def loaded_model_info(p, feature: Feature):
    """Model facts for this pass, or None after telling the user the model cannot be served."""
    try:
        return model_info(p.sd_model, p.sd_model.forge_objects.unet)
    except UnsupportedModel as e:
        did_not_run(p, feature, str(e))
        return None


def write_infotext(p, feature: Feature, values: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    p.extra_generation_params.update(feature.to_infotext(values))
    if extra:
        p.extra_generation_params.update(extra)
