# Mirrors modules/launch_utils.py is_installed / run_pip / run_extension_installer (Forge main @ dfdcbab6;
# reForge @ 3b56b268). is_installed(package): an installed distribution of that name, else an importable
# module of that name. run_pip(command, desc) runs `python -m pip <command> --prefer-binary` (nothing with
# --skip-install). run_extension_installer(dir) runs <dir>/install.py in a SEPARATE process with the
# WebUI root first on PYTHONPATH and reports (does not raise) a failure.
# Test hooks (not in the real file): the set of "installed" packages is a table tests control
# (STANDIN_INSTALLED, JSON {name: version}, inherited by the installer process), pip is never really run:
# each call is appended to pip_calls and, in an installer process, to the file named by STANDIN_PIP_LOG.
import json
import os
import subprocess
import sys

from modules import errors, paths

python = sys.executable
index_url = ""
skip_install = False
pip_calls = []


def installed_packages():
    return json.loads(os.environ.get("STANDIN_INSTALLED", "{}"))


def set_installed(packages):
    """{name: version} -- what is_installed / installed_version see (also in installer subprocesses)."""
    os.environ["STANDIN_INSTALLED"] = json.dumps(dict(packages))


def installed_version(package):
    return installed_packages().get(package.lower().replace("_", "-"))


def is_installed(package):
    return installed_version(package) is not None


def run(command, desc=None, errdesc=None, custom_env=None, live=False):
    raise RuntimeError(f"the stand-in does not run shell commands: {command}")


def run_pip(command, desc=None, live=False):
    if skip_install:
        return None
    pip_calls.append((command, desc))
    log = os.environ.get("STANDIN_PIP_LOG")
    if log:
        with open(log, "a", encoding="utf8") as f:
            f.write(json.dumps([command, desc]) + "\n")
    print(f"Installing {desc}")
    return ""


def run_extension_installer(extension_dir, extra_env=None):
    """Run install.py like the launcher; returns (returncode, stdout, stderr) for tests."""
    installer = os.path.join(extension_dir, "install.py")
    if not os.path.isfile(installer):
        return None
    env = {**os.environ, **(extra_env or {})}
    import standin_flavour
    flavour_dir = os.path.dirname(os.path.abspath(standin_flavour.__file__))
    env["PYTHONPATH"] = os.pathsep.join([paths.script_path, flavour_dir, env.get("PYTHONPATH", "")])
    result = subprocess.run([python, installer], env=env, capture_output=True, text=True, cwd=extension_dir)
    if result.returncode != 0:
        try:
            raise RuntimeError(f"Error running install.py for extension {extension_dir}.\n{result.stderr}")
        except RuntimeError:
            errors.report(f"Error running install.py for extension {extension_dir}", exc_info=True)
    elif result.stdout.strip():
        print(result.stdout.strip())
    return result.returncode, result.stdout, result.stderr
