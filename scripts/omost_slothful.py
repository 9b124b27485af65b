from modules import scripts

from lib_omost.forge.runners import SLOTHFUL
from lib_omost.forge.script_support import AccordionScript, register_feature


class SlothfulAttentionScript(AccordionScript, scripts.Script):
    sorting_priority = 17
    accordion = SLOTHFUL


register_feature(SLOTHFUL.feature)
