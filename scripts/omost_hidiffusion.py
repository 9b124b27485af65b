from modules import scripts

from lib_omost.forge.runners import HIDIFFUSION
from lib_omost.forge.script_support import AccordionScript, register_feature


class HiDiffusionScript(AccordionScript, scripts.Script):
    sorting_priority = 18
    accordion = HIDIFFUSION


register_feature(HIDIFFUSION.feature)
