"""The pieces every accordion script shares: UI from the declaration, xyz axes registered once."""

from __future__ import annotations

from lib_omost.forge.accordions import run
from lib_omost.forge.ui import install_script_ui, register_xyz_axes


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
    pass, run by ``lib_omost.forge.accordions.run``) and optionally ``build`` (a custom layout).
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


__all__ = ["AccordionScript", "install_script_ui", "register_feature"]
