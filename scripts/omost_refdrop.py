from modules import scripts

from lib_omost.features.refdrop import FEATURE
from lib_omost.forge.refdrop_run import finish_refdrop, report_batch, run_refdrop
from lib_omost.forge.refdrop_ui import build_refdrop_ui
from lib_omost.forge.script_support import AccordionScript, register_feature


class RefDropScript(AccordionScript, scripts.Script):
    sorting_priority = 16
    feature = FEATURE
    run = staticmethod(run_refdrop)
    build = staticmethod(build_refdrop_ui)

    def postprocess_batch(self, p, *args, **kwargs):
        report_batch(p)

    def postprocess(self, p, processed, *args):
        finish_refdrop(p)


register_feature(FEATURE)
