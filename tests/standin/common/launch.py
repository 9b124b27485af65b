# Mirrors the WebUI root's launch.py (Forge main @ dfdcbab6; reForge @ 3b56b268): re-exports of
# modules/launch_utils (is_installed, run_pip, run, python, index_url, run_extension_installer).
from modules import launch_utils

python = launch_utils.python
index_url = launch_utils.index_url
run = launch_utils.run
is_installed = launch_utils.is_installed
run_pip = launch_utils.run_pip
run_extension_installer = launch_utils.run_extension_installer
