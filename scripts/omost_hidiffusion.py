from modules import scripts

from lib_omost.features.hidiffusion import FEATURE
from lib_omost.forge.runners import run_hidiffusion
from lib_omost.forge.script_support import install_script_ui, register_xyz


class HiDiffusionScript(scripts.Script):
    sorting_priority = 18

    def title(self):
        return FEATURE.title

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return install_script_ui(self, FEATURE, is_img2img)

    def process_before_every_sampling(self, p, *args, **kwargs):
        run_hidiffusion(p, args)


register_xyz(FEATURE)
