from modules import scripts

from lib_omost.features.slothful import FEATURE
from lib_omost.forge.runners import run_slothful
from lib_omost.forge.script_support import AccordionScript, register_feature


class SlothfulAttentionScript(AccordionScript, scripts.Script):
    sorting_priority = 17
    feature = FEATURE
    run = staticmethod(run_slothful)


register_feature(FEATURE)
