"""The one mark on what we install on the WebUI's objects ("this is ours"), and how it is taken off again.

Every function the pass installer (``lib_omost.forge.pass_plan``) puts on a UNet patcher or on ``p`` carries
``OURS``, holding what the slot held before (None: nothing, or an entry appended to a list). Taking ours
off restores exactly that, so a later install of ours (a second accordion in the same pass, Forge main's
discarded first hires call) replaces our earlier parts instead of stacking on them, and never drops what
another extension put there.
"""

from __future__ import annotations

OURS = "omost_installed_over"

ALL_MARKERS = (OURS,)


def mark(fn, replaced=None):
    """``fn``, marked as ours; ``replaced``: what its slot held before (None for a list entry)."""
    setattr(fn, OURS, replaced)
    return fn


def is_ours(fn) -> bool:
    return hasattr(fn, OURS)


def before_ours(fn):
    """What a slot held before we put ``fn`` there; ``fn`` itself when it is not ours."""
    return getattr(fn, OURS) if is_ours(fn) else fn


def unmark_slot(table: dict, key) -> None:
    """Give ``table[key]`` back what it held before ours (drop the key when it held nothing)."""
    if is_ours(table.get(key)):
        previous = before_ours(table[key])
        if previous is None:
            del table[key]
        else:
            table[key] = previous


def unmark_list(table: dict, key) -> None:
    """Take our entries out of the list ``table[key]`` (others keep their order)."""
    if key in table:
        table[key] = [f for f in table[key] if not is_ours(f)]
