from modules import scripts

from lib_omost.features.hidiffusion import FEATURE
from lib_omost.forge.runners import run_hidiffusion
from lib_omost.forge.script_support import AccordionScript, register_feature


class HiDiffusionScript(AccordionScript, scripts.Script):
    sorting_priority = 18
    feature = FEATURE
    run = staticmethod(run_hidiffusion)


register_feature(FEATURE)
