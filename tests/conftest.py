import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The CI machine has 2 cores shared by everything: keep torch to one thread per test process.
torch.set_num_threads(1)
