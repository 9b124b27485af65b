from modules import scripts

from lib_omost.features.refdrop import FEATURE
from lib_omost.forge.refdrop_run import finish_refdrop, report_batch, run_refdrop
from lib_omost.forge.refdrop_ui import build_refdrop_ui
from lib_omost.forge.script_support import install_script_ui, register_xyz


class RefDropScript(scripts.Script):
    sorting_priority = 16

    def title(self):
        return FEATURE.title

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return install_script_ui(self, FEATURE, is_img2img, build=build_refdrop_ui)

    def process_before_every_sampling(self, p, *args, **kwargs):
        run_refdrop(p, args)

    def postprocess_batch(self, p, *args, **kwargs):
        report_batch(p)

    def postprocess(self, p, processed, *args):
        finish_refdrop(p)


register_xyz(FEATURE)
