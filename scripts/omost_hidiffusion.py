from modules import scripts

from lib_omost.forge.accordions import AccordionScript, register_feature
from lib_omost.forge.runners import HIDIFFUSION


class HiDiffusionScript(AccordionScript, scripts.Script):
    sorting_priority = 18
    accordion = HIDIFFUSION


register_feature(HIDIFFUSION.feature)
