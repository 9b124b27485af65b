from modules import script_callbacks, scripts

from lib_omost.features.omost import FEATURE
from lib_omost.forge.omost_run import run_omost
from lib_omost.forge.omost_ui import add_settings, build_omost_ui
from lib_omost.forge.script_support import AccordionScript, register_feature


class OmostScript(AccordionScript, scripts.Script):
    sorting_priority = 15
    feature = FEATURE
    run = staticmethod(run_omost)
    build = staticmethod(build_omost_ui)


register_feature(FEATURE)
script_callbacks.on_ui_settings(add_settings)
