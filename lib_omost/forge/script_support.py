"""The pieces every accordion script shares: UI from the declaration, xyz axes registered once."""

from __future__ import annotations

from lib_omost.forge.ui import install_script_ui, register_xyz_axes


def register_xyz(feature) -> None:
    """Add the feature's parameters to the X/Y/Z plot.

    Right away when the plot script is already loaded (the WebUI loads its own scripts/ before extensions,
    and in API-only mode the plot's UI is built before any before_ui callback runs), and again from
    on_before_ui for a plot loaded later; labels already present are not added twice.
    """
    from modules import script_callbacks
    register_xyz_axes([feature])
    script_callbacks.on_before_ui(lambda: register_xyz_axes([feature]))


__all__ = ["install_script_ui", "register_xyz"]
