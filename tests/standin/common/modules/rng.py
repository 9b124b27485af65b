# Mirrors modules/rng.py ImageRNG (Forge main @ dfdcbab6, reForge @ 3b56b268): one noise tensor per seed
# of the batch, shape (C, H/8, W/8), stacked; next() gives the initial noise. The stand-in draws on the CPU
# generator (the real default is GPU noise); subseeds / seed resize are not modelled.
import torch


class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape, self.seeds = tuple(shape), list(seeds)
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in self.seeds]

    def next(self):
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])
