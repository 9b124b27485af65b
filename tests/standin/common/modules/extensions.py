# Mirrors modules/extensions.py (Forge main @ dfdcbab6, reForge @ 3b56b268): Extension(name, path,
# is_builtin) with canonical_name and list_files(subdir, extension) (sorted file names), the `extensions`
# list, active() and find_extension(filename). Tests register extension directories with add_extension.
import os
from collections import namedtuple

ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])


class Extension:
    def __init__(self, name, path, enabled=True, is_builtin=False):
        self.name, self.path, self.enabled, self.is_builtin = name, path, enabled, is_builtin
        self.canonical_name = name.lower()

    def list_files(self, subdir, extension):
        dirpath = os.path.join(self.path, subdir)
        if not os.path.isdir(dirpath):
            return []
        files = [ScriptFile(self.path, f, os.path.join(dirpath, f)) for f in sorted(os.listdir(dirpath))]
        return [x for x in files if os.path.splitext(x.path)[1].lower() == extension and os.path.isfile(x.path)]


extensions = []


def active():
    return [x for x in extensions if x.enabled]


def add_extension(path, name=None):
    extension = Extension(name or os.path.basename(os.path.abspath(path)), os.path.abspath(path))
    extensions.append(extension)
    return extension


def find_extension(filename):
    for extension in extensions:
        if os.path.abspath(filename).startswith(extension.path + os.sep):
            return extension
    return None
