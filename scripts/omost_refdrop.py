from modules import scripts

from lib_omost.forge.accordions import AccordionScript, register_feature
from lib_omost.forge.refdrop_run import REFDROP, finish_refdrop, report_batch
from lib_omost.forge.refdrop_ui import build_refdrop_ui


class RefDropScript(AccordionScript, scripts.Script):
    sorting_priority = 16
    accordion = REFDROP
    build = staticmethod(build_refdrop_ui)

    def postprocess_batch(self, p, *args, **kwargs):
        report_batch(p)

    def postprocess(self, p, processed, *args):
        finish_refdrop(p)


register_feature(REFDROP.feature)
