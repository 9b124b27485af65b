from modules import script_callbacks, scripts

from lib_omost.features.omost import FEATURE
from lib_omost.forge.omost_run import run_omost
from lib_omost.forge.omost_ui import add_settings, build_omost_ui
from lib_omost.forge.script_support import install_script_ui, register_xyz


class OmostScript(scripts.Script):
    sorting_priority = 15

    def title(self):
        return FEATURE.title

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return install_script_ui(self, FEATURE, is_img2img, build=build_omost_ui)

    def process_before_every_sampling(self, p, *args, **kwargs):
        run_omost(p, args)


register_xyz(FEATURE)
script_callbacks.on_ui_settings(add_settings)
