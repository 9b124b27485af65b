# Mirrors modules/prompt_parser.py (Forge main @ dfdcbab6; reForge @ 3b56b268): SdConditioning (a list
# of prompts carrying width / height / is_negative_prompt, plus distilled_cfg_scale in Forge main only),
# AND splitting with ":weight" (get_multicond_prompt_list), ScheduledPromptConditioning,
# MulticondLearnedConditioning, DictWithShape, reconstruct_cond_batch, reconstruct_multicond_batch
# (sub-prompts of different token lengths padded with their last vector), parse_prompt_attention.
# Not modelled: prompt editing / alternation schedules ([a:b:when], [a|b]); every prompt has one schedule
# entry lasting all steps.
import re
from collections import namedtuple

import torch

import standin_flavour
from standin_core.text import parse_prompt_attention  # noqa: F401 (real name)

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    """A list of prompts for the conditioner model; width/height are needed by SDXL."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None, **kwargs):
        if kwargs and (set(kwargs) != {"distilled_cfg_scale"} or not standin_flavour.SDCONDITIONING_HAS_DISTILLED_CFG):
            raise TypeError(f"SdConditioning() got unexpected keyword arguments {sorted(kwargs)}")
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)
        if standin_flavour.SDCONDITIONING_HAS_DISTILLED_CFG:
            self.distilled_cfg_scale = kwargs.get("distilled_cfg_scale") or getattr(copy_from, "distilled_cfg_scale", None)


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    steps = hires_steps or base_steps
    return [[[steps, prompt]] for prompt in prompts]


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    res, cache = [], {}
    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    for prompt, schedule in zip(prompts, schedules):
        if prompt in cache:
            res.append(cache[prompt])
            continue
        texts = SdConditioning([text for _, text in schedule], copy_from=prompts)
        conds = model.get_learned_conditioning(texts)
        cond_schedule = []
        for i, (end_at_step, _) in enumerate(schedule):
            cond = {k: v[i] for k, v in conds.items()} if isinstance(conds, dict) else conds[i]
            cond_schedule.append(ScheduledPromptConditioning(end_at_step, cond))
        cache[prompt] = cond_schedule
        res.append(cond_schedule)
    return res


re_AND = re.compile(r"\bAND\b")
re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def get_multicond_prompt_list(prompts):
    res_indexes, prompt_indexes = [], {}
    flat = SdConditioning(prompts)
    flat.clear()
    for prompt in prompts:
        indexes = []
        for subprompt in re_AND.split(prompt):
            match = re_weight.search(subprompt)
            text, weight = match.groups() if match is not None else (subprompt, 1.0)
            weight = float(weight) if weight is not None else 1.0
            index = prompt_indexes.get(text)
            if index is None:
                index = prompt_indexes[text] = len(flat)
                flat.append(text)
            indexes.append((index, weight))
        res_indexes.append(indexes)
    return res_indexes, flat, prompt_indexes


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules, self.weight = schedules, weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape, self.batch = shape, batch


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    res_indexes, flat, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, flat, steps, hires_steps, use_old_scheduling)
    batch = [[ComposableScheduledPromptConditioning(learned[i], weight) for i, weight in indexes]
             for indexes in res_indexes]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


class DictWithShape(dict):
    def __init__(self, x, shape=None):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape

    def to(self, *args, **kwargs):
        for k in self.keys():
            if isinstance(self[k], torch.Tensor):
                self[k] = self[k].to(*args, **kwargs)
        return self

    def advanced_indexing(self, item):
        return DictWithShape({k: v[item] for k, v in self.items() if isinstance(v, torch.Tensor)})


def _schedule_index(schedules, current_step):
    for index, entry in enumerate(schedules):
        if current_step <= entry.end_at_step:
            return index
    return 0


def reconstruct_cond_batch(c, current_step):
    param = c[0][0].cond
    if isinstance(param, dict):
        res = DictWithShape({k: torch.zeros((len(c),) + v.shape, device=v.device, dtype=v.dtype) for k, v in param.items()})
    else:
        res = torch.zeros((len(c),) + param.shape, device=param.device, dtype=param.dtype)
    for i, schedule in enumerate(c):
        entry = schedule[_schedule_index(schedule, current_step)].cond
        if isinstance(param, dict):
            for k, v in entry.items():
                res[k][i] = v
        else:
            res[i] = entry
    return res


def stack_conds(tensors):
    length = max(x.shape[0] for x in tensors)
    padded = [x if x.shape[0] == length else torch.vstack([x, x[-1:].repeat([length - x.shape[0], 1])])
              for x in tensors]
    return torch.stack(padded)


def reconstruct_multicond_batch(c, current_step):
    param = c.batch[0][0].schedules[0].cond
    tensors, conds_list = [], []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable in composable_prompts:
            conds_for_batch.append((len(tensors), composable.weight))
            tensors.append(composable.schedules[_schedule_index(composable.schedules, current_step)].cond)
        conds_list.append(conds_for_batch)
    if isinstance(tensors[0], dict):
        stacked = DictWithShape({k: stack_conds([x[k] for x in tensors]) for k in tensors[0].keys()})
    else:
        stacked = stack_conds(tensors).to(device=param.device, dtype=param.dtype)
    return conds_list, stacked
