from modules import script_callbacks, scripts

from lib_omost.forge.accordions import AccordionScript, register_feature
from lib_omost.forge.omost_run import OMOST
from lib_omost.forge.omost_ui import add_settings, build_omost_ui


class OmostScript(AccordionScript, scripts.Script):
    sorting_priority = 15
    accordion = OMOST
    build = staticmethod(build_omost_ui)


register_feature(OMOST.feature)
script_callbacks.on_ui_settings(add_settings)
