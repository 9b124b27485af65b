# Mirrors modules/paths.py / paths_internal.py (Forge main @ dfdcbab6, reForge @ 3b56b268): script_path is
# the WebUI root (here tests/standin/common, whose scripts/ holds the built-in xyz_grid.py).
import os
import tempfile

script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data_path = tempfile.mkdtemp(prefix="standin-webui-data-")
extensions_dir = os.path.join(data_path, "extensions")
