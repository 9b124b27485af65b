# Mirrors scripts/xyz_grid.py of the WebUI root (Forge main @ dfdcbab685e57677014f05a3309b48cc87383167;
# reForge @ 3b56b268, same logic). Loaded by modules.scripts.load_scripts like the real one, so its module
# is named "xyz_grid.py" and sits in scripts_data (script_class.__module__ == "xyz_grid.py").
# Reproduced: AxisOption(label, type, apply, format_value, confirm, cost, choices, prepare),
# AxisOptionTxt2Img / AxisOptionImg2Img, the module-level axis_options list; ui() snapshots
# current_axis_options (axes appended later are NOT selectable by that instance) and returns the 18
# components in the real order; run(): values from the dropdown when the axis has choices and csv_mode is
# off, else parsed from CSV (int/float ranges "1-5", "1-5 (+2)", "1-5 [3]"), converted with opt.type,
# confirm(p, values) before any cell; cells visit z, then y, then x (equal costs); each cell does
# pc = copy(p) (SHALLOW: extra_generation_params and script_args are shared with p), pc.styles copied,
# x/y/z apply(pc, value, values), process_images(pc). Grid images are not drawn: run() returns a Grid
# with every cell's Processed.
import csv
import re
from copy import copy
from io import StringIO
from itertools import chain, permutations

import gradio as gr
import numpy as np

import modules.scripts as scripts
from modules import processing
from modules.processing import process_images


def apply_field(field):
    def fun(p, x, xs):
        setattr(p, field, x)
    return fun


def apply_prompt(p, x, xs):
    if xs[0] not in p.prompt and xs[0] not in p.negative_prompt:
        raise RuntimeError(f"Prompt S/R did not find {xs[0]} in prompt or negative prompt.")
    p.prompt = p.prompt.replace(xs[0], x)
    p.negative_prompt = p.negative_prompt.replace(xs[0], x)


def format_value_add_label(p, opt, x):
    if type(x) == float:
        x = round(x, 8)
    return f"{opt.label}: {x}"


def format_value(p, opt, x):
    if type(x) == float:
        x = round(x, 8)
    return x


def format_nothing(p, opt, x):
    return ""


def do_nothing(p, x, xs):
    pass


def str_permutations(x):
    return x


def list_to_csv_string(data_list):
    with StringIO() as o:
        csv.writer(o).writerow(data_list)
        return o.getvalue().strip()


def csv_string_to_list_strip(data_str):
    return list(map(str.strip, chain.from_iterable(csv.reader(StringIO(data_str), skipinitialspace=True))))


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0, choices=None,
                 prepare=None):
        self.label, self.type, self.apply = label, type, apply
        self.format_value, self.confirm, self.cost = format_value, confirm, cost
        self.prepare, self.choices = prepare, choices


class AxisOptionImg2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = False


axis_options = [
    AxisOption("Nothing", str, do_nothing, format_value=format_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOptionTxt2Img("Hires steps", int, apply_field("hr_second_pass_steps")),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
    AxisOption("Prompt S/R", str, apply_prompt, format_value=format_value),
]

re_range = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
re_range_float = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
re_range_count = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
re_range_count_float = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*")


def expand_values(opt, vals, vals_dropdown, csv_mode):
    if opt.label == "Nothing":
        return [0]
    if opt.choices is not None and not csv_mode:
        valslist = vals_dropdown
    elif opt.prepare is not None:
        valslist = opt.prepare(vals)
    else:
        valslist = csv_string_to_list_strip(vals)
    if opt.type in (int, float):
        ranged, counted = (re_range, re_range_count) if opt.type == int else (re_range_float, re_range_count_float)
        expanded = []
        for val in valslist:
            if val.strip() == "":
                continue
            m, mc = ranged.fullmatch(val), counted.fullmatch(val)
            if m is not None:
                start, end = opt.type(m.group(1)), opt.type(m.group(2))
                step = opt.type(m.group(3)) if m.group(3) is not None else 1
                expanded += (list(range(start, end + 1, step)) if opt.type == int
                             else np.arange(start, end + step, step).tolist())
            elif mc is not None:
                start, end = opt.type(mc.group(1)), opt.type(mc.group(2))
                num = int(mc.group(3)) if mc.group(3) is not None else 1
                values = np.linspace(start=start, stop=end, num=num).tolist()
                expanded += [int(x) for x in values] if opt.type == int else values
            else:
                expanded.append(val)
        valslist = expanded
    elif opt.type == str_permutations:
        valslist = list(permutations(valslist))
    return [opt.type(x) for x in valslist]


class Grid:
    def __init__(self, cells, xs, ys, zs):
        self.cells, self.xs, self.ys, self.zs = cells, xs, ys, zs


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):
        self.current_axis_options = [x for x in axis_options if type(x) == AxisOption or x.is_img2img == is_img2img]
        labels = [x.label for x in self.current_axis_options]
        components = []
        for axis, default in (("x", 1), ("y", 0), ("z", 0)):
            components += [
                gr.Dropdown(label=f"{axis.upper()} type", choices=labels, value=labels[default], type="index",
                            elem_id=self.elem_id(f"{axis}_type")),
                gr.Textbox(label=f"{axis.upper()} values", lines=1, elem_id=self.elem_id(f"{axis}_values")),
                gr.Dropdown(label=f"{axis.upper()} values", visible=False, multiselect=True, interactive=True),
            ]
        components += [gr.Checkbox(label="Draw legend", value=True),
                       gr.Checkbox(label="Include Sub Images", value=False),
                       gr.Checkbox(label="Include Sub Grids", value=False),
                       gr.Checkbox(label="Keep -1 for seeds", value=False),
                       gr.Checkbox(label="Vary seeds for X", value=False),
                       gr.Checkbox(label="Vary seeds for Y", value=False),
                       gr.Checkbox(label="Vary seeds for Z", value=False),
                       gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2),
                       gr.Checkbox(label="Use text inputs instead of dropdowns", value=False)]
        x_type, x_values, _, y_type, y_values, _, z_type, z_values, _ = components[:9]
        self.infotext_fields = ((x_type, "X Type"), (x_values, "X Values"), (y_type, "Y Type"), (y_values, "Y Values"),
                                (z_type, "Z Type"), (z_values, "Z Values"))
        return components

    def run(self, p, x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values,
            z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x,
            vary_seeds_y, vary_seeds_z, margin_size, csv_mode):
        x_type, y_type, z_type = x_type or 0, y_type or 0, z_type or 0
        if not no_fixed_seeds:
            processing.fix_seed(p)
        opts = [self.current_axis_options[t] for t in (x_type, y_type, z_type)]
        values = []
        for opt, vals, dropdown in zip(opts, (x_values, y_values, z_values),
                                       (x_values_dropdown, y_values_dropdown, z_values_dropdown)):
            expanded = expand_values(opt, vals, dropdown, csv_mode)
            if opt.confirm:
                opt.confirm(p, expanded)
            values.append(expanded)
        (x_opt, y_opt, z_opt), (xs, ys, zs) = opts, values
        cells = {}
        for iz, z in enumerate(zs):
            for iy, y in enumerate(ys):
                for ix, x in enumerate(xs):
                    pc = copy(p)
                    pc.styles = pc.styles[:]
                    x_opt.apply(pc, x, xs)
                    y_opt.apply(pc, y, ys)
                    z_opt.apply(pc, z, zs)
                    if vary_seeds_x:
                        pc.seed += ix
                    if vary_seeds_y:
                        pc.seed += iy * (len(xs) if vary_seeds_x else 1)
                    cells[(ix, iy, iz)] = process_images(pc)
        return Grid(cells, xs, ys, zs)
