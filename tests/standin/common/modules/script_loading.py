# Mirrors modules/script_loading.py load_module (Forge main @ dfdcbab6, reForge @ 3b56b268): a script file
# is executed as a module named after its FILE NAME (e.g. "xyz_grid.py") and is NOT put in sys.modules.
import importlib.util
import os

loaded_scripts = {}


def load_module(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded_scripts[path] = module
    return module
