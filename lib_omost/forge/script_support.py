"""The pieces every accordion script shares: UI from the declaration, xyz axes registered once."""

from __future__ import annotations

from lib_omost.forge.ui import install_script_ui, register_xyz_axes

_xyz_features: list = []


def register_xyz(feature) -> None:
    """Add the feature's parameters to the X/Y/Z plot when the UI is built (before_ui fires once per UI)."""
    from modules import script_callbacks
    if feature not in _xyz_features:
        _xyz_features.append(feature)
        script_callbacks.on_before_ui(lambda: register_xyz_axes([feature]))


__all__ = ["install_script_ui", "register_xyz"]
