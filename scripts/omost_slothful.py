from modules import scripts

from lib_omost.forge.accordions import AccordionScript, register_feature
from lib_omost.forge.runners import SLOTHFUL


class SlothfulAttentionScript(AccordionScript, scripts.Script):
    sorting_priority = 17
    accordion = SLOTHFUL


register_feature(SLOTHFUL.feature)
