"""RefDrop in a generation: what it contributes to a sampling pass (Save records into a store, Use blends a
named reference in), and after the batch, the report and the reference file of a Save. The named references
themselves: ``lib_omost.forge.refdrop_references``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lib_omost.attention.refdrop import ReferenceMismatchError, step_index
from lib_omost.attention.refdrop_file import (
    ReferenceSaveError,
    check_reference_family,
    save_reference,
)
from lib_omost.attention.refdrop_store import MIB, ReferenceBudgetError, ReferenceStore
from lib_omost.features import refdrop
from lib_omost.forge import refdrop_references as references
from lib_omost.forge.accordions import Accordion, Contribution, DidNotRun
from lib_omost.forge.generation import report_problem
from lib_omost.forge.pass_plan import Parts
from lib_omost.forge.webui import attn1_projections, schedule_sigmas
from lib_omost.quoting import quoted

log = logging.getLogger("sd-forge-omost")

SAVE_ATTR = "omost_refdrop_save"            # the SaveJob of one generation, on p
STAGES_ATTR = "omost_refdrop_stages"        # stages installed since the last batch's report, on p


class ObservedSteps:
    """Step index by the order in which distinct sigmas are first seen (when the sampler gives no schedule)."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def __call__(self, sigma: float) -> int:
        for i, s in enumerate(self.seen):
            if abs(s - sigma) <= 1e-4 * max(abs(s), 1e-8):
                return i
        self.seen.append(sigma)
        return len(self.seen) - 1


def step_counter(p):
    """(step_of(sigma), number of steps) for this pass."""
    sigmas = schedule_sigmas(p)
    if sigmas is None:
        return ObservedSteps(), int(p.steps)
    return (lambda sigma: step_index(sigmas, sigma)), len(sigmas) - 1


@dataclass
class SaveJob:
    """A Save in progress: where its reference goes and what it recorded so far."""
    name: str
    family: str
    steps: int
    store: ReferenceStore
    problem: str = ""           # why there is no file: recording stopped (it would be incomplete), nothing
                                # was recorded, or writing failed; repeated in the notes of later batches
    written: bool = False       # the file is on disk (written after the first batch, which records it all)

    @property
    def failed(self) -> bool:
        return bool(self.problem)


def fail_job(p, job: SaveJob, message: str) -> None:
    job.problem = message
    report_problem(p, refdrop.FEATURE, message)


def latent_size(p) -> tuple[int, int]:
    """(height, width) of this pass's latent (the first pass: Save never records the hires pass)."""
    return int(p.height) // 8, int(p.width) // 8


def contribute_refdrop(p, values, info, _sampling) -> Contribution:
    feature = refdrop.FEATURE
    hires = getattr(p, "is_hr_pass", False)
    if hires and (values["mode"] == refdrop.SAVE or not values["hires_pass"]):
        return Contribution()
    try:
        layers = refdrop.selected_layers(values, info.layers)
        step_of, steps = step_counter(p)
        limit = refdrop.saved_steps(steps, values["save_percent"])
        if values["mode"] == refdrop.SAVE:
            references.reference_path(values["reference"])          # a bad name fails now, not after sampling
            job = getattr(p, SAVE_ATTR, None)
            if job is not None and (job.written or job.failed):
                # later batches (n_iter): the first batch recorded it
                return Contribution(infotext=values, notes=(job.problem,) if job.failed else ())
            if job is None:         # the first batch
                budget, rows = references.budget_bytes(), 2 if values["keep_uncond"] else 1
                refdrop.check_save_budget(refdrop.save_bytes(info, layers, latent_size(p), limit, rows,
                                                             values["precision"]), budget, references.BUDGET_SETTING)
                job = SaveJob(values["reference"], info.family, steps,
                              ReferenceStore(budget_bytes=budget, keep_uncond=values["keep_uncond"],
                                             compact=values["precision"] == refdrop.BITS8))
                setattr(p, SAVE_ATTR, job)
            stage = refdrop.RefDropStage(refdrop.SAVE, layers, job.store, step_of, limit)
        else:
            name = values["reference"]
            store, ref_info = references.get_reference(name)
            check_reference_family(ref_info, info.family)
            refdrop.check_widths(ref_info.widths, info, layers)
            held = {layer for layer in layers if layer.label() in ref_info.widths}
            if not held:
                raise ValueError(f"the reference {quoted(name)} holds none of the selected layers (it was saved with "
                                 f"other layer groups or disabled layers)")
            if held != layers:
                report_problem(p, feature, f"the reference {quoted(name)} holds no entries for the selected layers "
                                           f"{refdrop.layer_ranges(layers - held, info.layers)}; they run "
                                           f"without RefDrop")
            stage = refdrop.RefDropStage(refdrop.USE, held, store, step_of, limit, values["coefficient"],
                                         reference=name, projections=attn1_projections(p.sd_model.forge_objects.unet))
    except (ValueError, OSError, ReferenceMismatchError, ReferenceBudgetError) as e:
        raise DidNotRun(str(e)) from None
    setattr(p, STAGES_ATTR, [*getattr(p, STAGES_ATTR, []), stage])
    return Contribution(Parts(pre_stages=(stage,)) if stage.mode == refdrop.SAVE else Parts(stages=(stage,)), values)


REFDROP = Accordion(refdrop.FEATURE, contribute_refdrop)


def report_batch(p) -> None:
    """After a batch's sampling, before its infotexts are written: what went wrong while sampling."""
    stages = getattr(p, STAGES_ATTR, [])
    setattr(p, STAGES_ATTR, [])
    job = getattr(p, SAVE_ATTR, None)
    for stage in stages:
        if stage.steps_without_reference:
            report_problem(p, refdrop.FEATURE, f"the reference {quoted(stage.reference)} holds "
                                               f"{refdrop.describe_steps(stage.reference_steps)}; "
                                               f"{refdrop.describe_steps(stage.steps_without_reference)} ran "
                                               f"without RefDrop")
        if not stage.problems:
            continue
        if stage.mode == refdrop.SAVE:
            fail_job(p, job, f"{stage.problems[0]}; recording stopped and the reference {quoted(job.name)} is "
                             "not saved (it would be incomplete)")
        else:
            report_problem(p, refdrop.FEATURE, f"{stage.problems[0]}; RefDrop stopped there and the rest of "
                                               f"this pass ran without it")
    if job is not None and not job.failed and not job.store.entries:
        fail_job(p, job, f"nothing was recorded (no selected layer or step); the reference {quoted(job.name)} "
                         "is not saved")
    if job is not None and not (job.failed or job.written):
        write_reference(p, job)


def write_reference(p, job: SaveJob) -> None:
    """Write a recorded reference to its file; a failure is reported (console with the path, note with the
    reason) and nothing is claimed saved."""
    path = references.reference_path(job.name)
    try:
        size = save_reference(job.store, path, model_family=job.family, resolution=(int(p.width), int(p.height)),
                              steps=job.steps)
    except ReferenceSaveError as e:
        log.warning("RefDrop: %s", e)
        fail_job(p, job, f"the reference {quoted(job.name)} could not be written ({e.reason}); nothing was "
                         "saved (the console names the folder)")
        return
    job.written = True
    references.forget(path)      # the next Use loads the new file
    log.info("RefDrop: saved reference %r (%.1f MiB, %d entries) to %s", job.name, size / MIB,
             len(job.store.entries), path)


def finish_refdrop(p) -> None:
    """After the generation: write a Save's reference if no batch report did (problems were reported there)."""
    job = getattr(p, SAVE_ATTR, None)
    if job is not None and not (job.failed or job.written):
        write_reference(p, job)
