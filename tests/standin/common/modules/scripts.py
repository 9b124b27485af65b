# Mirrors modules/scripts.py (Forge main @ dfdcbab685e57677014f05a3309b48cc87383167; reForge @
# 3b56b268ad9158ee8b30900973b6ccda4ec22241):
# * Script base class (title/show/ui/process/process_before_every_sampling/... no-ops), AlwaysVisible.
# * load_scripts(): clears script callbacks; lists scripts/*.py of the WebUI root then of each extension
#   (file names sorted); every script base dir is prepended to sys.path and STAYS there; each file is
#   executed with script_loading.load_module (module name = file name, not in sys.modules) and every class
#   in it that subclasses Script is registered in scripts_data (imported subclasses too).
# * ScriptRunner: initialize_scripts (instantiate, show() -> alwayson / selectable), setup_ui (alwayson UIs
#   sorted by sorting_priority, each in a gr.Group; args_from/args_to over self.inputs whose slot 0 is the
#   script dropdown; api_info; infotext_fields / paste_field_names collected), run(), and the callbacks,
#   each wrapped so that an exception is reported (errors.report) and processing continues.
#   process_before_every_sampling: Forge main loops over alwayson_scripts; reForge over the ordered
#   scripts that override the method (standin_flavour.BEFORE_EVERY_SAMPLING_SCRIPTS).
import inspect
import os
import re
import sys
from collections import namedtuple

import gradio as gr

import standin_flavour
from modules import errors, extensions, paths, script_callbacks, script_loading

AlwaysVisible = object()


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image, index=0):
        self.image, self.index = image, index


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None
    sorting_priority = 0

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_hr(self, p, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def describe(self):
        return ""

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabname = f"{'img2img' if self.is_img2img else 'txt2img'}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


current_basedir = paths.script_path


def basedir():
    return current_basedir


ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []
scripts_txt2img = None
scripts_img2img = None
scripts_current = None


def list_scripts(scriptdirname, extension):
    root = os.path.join(paths.script_path, scriptdirname)
    files = []
    if os.path.isdir(root):
        files += [ScriptFile(paths.script_path, f, os.path.join(root, f)) for f in sorted(os.listdir(root))
                  if os.path.isfile(os.path.join(root, f)) and os.path.splitext(f)[1].lower() == extension]
    for ext in extensions.active():
        files += [ScriptFile(s.basedir, s.filename, s.path) for s in ext.list_files(scriptdirname, extension)]
    return files


def load_scripts():
    global current_basedir, scripts_txt2img, scripts_img2img
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    scripts_list = list_scripts("scripts", ".py")
    for s in scripts_list:
        if s.basedir not in sys.path:
            sys.path = [s.basedir] + sys.path
    syspath = sys.path

    def register_scripts_from_module(module, scriptfile):
        for script_class in module.__dict__.values():
            if inspect.isclass(script_class) and issubclass(script_class, Script):
                scripts_data.append(ScriptClassData(script_class, scriptfile.path, scriptfile.basedir, module))

    for scriptfile in scripts_list:
        try:
            if scriptfile.basedir != paths.script_path:
                sys.path = [scriptfile.basedir] + sys.path
            current_basedir = scriptfile.basedir
            register_scripts_from_module(script_loading.load_module(scriptfile.path), scriptfile)
        except Exception:
            errors.report(f"Error loading script: {scriptfile.filename}", exc_info=True)
        finally:
            sys.path = syspath
            current_basedir = paths.script_path
    scripts_txt2img, scripts_img2img = ScriptRunner(), ScriptRunner()


def wrap_call(func, filename, funcname, *args, default=None, **kwargs):
    try:
        return func(*args, **kwargs)
    except Exception:
        errors.report(f"Error calling: {filename}/{funcname}", exc_info=True)
    return default


class ScriptRunner:
    def __init__(self):
        self.scripts, self.selectable_scripts, self.alwayson_scripts = [], [], []
        self.titles, self.title_map = [], {}
        self.infotext_fields, self.paste_field_names = [], []
        self.inputs = [None]

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for script_data in scripts_data:
            try:
                script = script_data.script_class()
            except Exception:
                errors.report(f"Error # failed to initialize Script {script_data.module}: ", exc_info=True)
                continue
            script.filename = script_data.path
            script.is_txt2img, script.is_img2img = not is_img2img, is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def create_script_ui(self, script):
        script.args_from = script.args_to = len(self.inputs)
        try:
            self.create_script_ui_inner(script)
        except Exception:
            errors.report(f"Error creating UI for {script.name}: ", exc_info=True)

    def create_script_ui_inner(self, script):
        from modules.api import models as api_models
        controls = wrap_call(script.ui, script.filename, "ui", script.is_img2img)
        script.controls = controls
        if controls is None:
            return
        script.name = wrap_call(script.title, script.filename, "title", default=script.filename).lower()
        api_args = []
        for control in controls:
            control.custom_script_source = os.path.basename(script.filename)
            arg_info = api_models.ScriptArg(label=control.label or "")
            for name in ("value", "minimum", "maximum", "step"):
                v = getattr(control, name, None)
                if v is not None:
                    setattr(arg_info, name, v)
            choices = getattr(control, "choices", None)
            if choices is not None:
                arg_info.choices = [x[0] if isinstance(x, tuple) else x for x in choices]
            api_args.append(arg_info)
        script.api_info = api_models.ScriptInfo(name=script.name, is_img2img=script.is_img2img,
                                                is_alwayson=script.alwayson, args=api_args)
        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields
        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names
        self.inputs += controls
        script.args_to = len(self.inputs)

    def setup_ui_for_section(self, section, scriptlist=None):
        scriptlist = sorted(self.alwayson_scripts if scriptlist is None else scriptlist,
                            key=lambda x: x.sorting_priority)
        for script in scriptlist:
            if script.alwayson and script.section != section:
                continue
            if script.create_group:
                with gr.Group(visible=script.alwayson) as group:
                    self.create_script_ui(script)
                script.group = group
            else:
                self.create_script_ui(script)

    def prepare_ui(self):
        self.inputs = [None]

    def setup_ui(self):
        titles = [wrap_call(s.title, s.filename, "title") or s.filename for s in self.scripts]
        self.title_map = {title.lower(): script for title, script in zip(titles, self.scripts)}
        self.titles = [wrap_call(s.title, s.filename, "title") or f"{s.filename} [error]" for s in self.selectable_scripts]
        self.setup_ui_for_section(None)
        dropdown = gr.Dropdown(label="Script", elem_id="script_list", choices=["None"] + self.titles, value="None",
                               type="index")
        self.inputs[0] = dropdown
        self.setup_ui_for_section(None, self.selectable_scripts)
        self.infotext_fields.append((dropdown, lambda x: gr.update(value=x.get("Script", "None"))))
        return self.inputs

    def run(self, p, *args):
        script_index = args[0]
        if script_index == 0 or script_index is None:
            return None
        script = self.selectable_scripts[script_index - 1]
        return script.run(p, *args[script.args_from:script.args_to])

    def overriding(self, method_name):
        """Alwayson scripts whose class overrides ``method_name`` (the real ordered_scripts, user sort aside)."""
        return [s for s in self.alwayson_scripts
                if getattr(s.__class__, method_name, None) != getattr(Script, method_name, None)]

    def _call_each(self, scripts, method_name, p, *extra, **kwargs):
        for script in scripts:
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, method_name)(p, *extra, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    def setup_scrips(self, p, *, is_ui=True):
        for script in self.alwayson_scripts:
            if not is_ui and script.setup_for_ui_only:
                continue
            try:
                script.setup(p, *p.script_args[script.args_from:script.args_to])
            except Exception:
                errors.report(f"Error running setup: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._call_each(self.overriding("before_process"), "before_process", p)

    def process(self, p):
        self._call_each(self.overriding("process"), "process", p)

    def before_process_batch(self, p, **kwargs):
        self._call_each(self.overriding("before_process_batch"), "before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._call_each(self.overriding("process_batch"), "process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):
        scripts = (self.alwayson_scripts if standin_flavour.BEFORE_EVERY_SAMPLING_SCRIPTS == "alwayson_scripts"
                   else self.overriding("process_before_every_sampling"))
        self._call_each(scripts, "process_before_every_sampling", p, **kwargs)

    def before_hr(self, p):
        self._call_each(self.overriding("before_hr"), "before_hr", p)

    def postprocess(self, p, processed):
        self._call_each(self.overriding("postprocess"), "postprocess", p, processed)

    def postprocess_batch(self, p, images, **kwargs):
        self._call_each(self.overriding("postprocess_batch"), "postprocess_batch", p, images=images, **kwargs)

    def post_sample(self, p, ps):
        self._call_each(self.overriding("post_sample"), "post_sample", p, ps)

    def script(self, title):
        return self.title_map.get(title.lower())
