"""RefDrop's named references in the WebUI: the files (``<extension>/refdrop_references/<name>.safetensors``,
they survive restarts), safe names, the memory budget setting, and the in-memory cache. The cache holds the
reference used last (one: each may be as large as the memory budget), by file path; a file changed on disk
is reloaded.
"""

from __future__ import annotations

import os
import re

from lib_omost.attention.refdrop_file import load_reference
from lib_omost.attention.refdrop_store import MIB, ReferenceBudgetError, ReferenceStore
from lib_omost.features import refdrop
from lib_omost.quoting import quoted

EXTENSION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_BUDGET_MIB = 4096
MAX_BUDGET_MIB = 1 << 20            # 1 TiB
BUDGET_SETTING = "Omost → 'RefDrop: memory budget of a saved reference (MiB)'"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}")      # whole name (fullmatch): no control characters
# names Windows reserves for devices, whatever the extension or case ("nul.safetensors" is the NUL device)
WINDOWS_DEVICES = frozenset(["con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                             *(f"lpt{i}" for i in range(10))])
_cache: dict[str, tuple[float, ReferenceStore, object]] = {}     # path -> (mtime, store, info)


def references_dir() -> str:
    return os.environ.get("OMOST_REFDROP_DIR") or os.path.join(EXTENSION_ROOT, "refdrop_references")


def check_reference_name(name: str) -> str:
    """A reference name that is a safe file name on every system, or ValueError saying what is allowed."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith((".", " ")):
        raise ValueError(f"reference name {quoted(name)}: use 1-64 letters, digits, spaces, '_', '-' or '.', "
                         "starting with a letter or digit and ending with neither a space nor '.'")
    if name.split(".")[0].rstrip(" ").lower() in WINDOWS_DEVICES:
        raise ValueError(f"reference name {quoted(name)} is a device name on Windows (CON, PRN, AUX, NUL, "
                         "COM0-COM9, LPT0-LPT9, with any extension); choose another name")
    return name


def reference_path(name: str) -> str:
    return os.path.join(references_dir(), f"{check_reference_name(name)}.safetensors")


def list_references() -> list[str]:
    folder = references_dir()
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-len(".safetensors")] for f in os.listdir(folder) if f.endswith(".safetensors"))


def delete_reference(name: str) -> str:
    path = reference_path(name)
    _cache.pop(path, None)
    if not os.path.exists(path):
        return f"no reference named {quoted(name)}"
    os.remove(path)
    return f"deleted reference {quoted(name)}"


def budget_bytes() -> int:
    """The memory budget of one reference (Settings, in MiB) in bytes."""
    from modules import shared
    mib = getattr(shared.opts, "omost_refdrop_budget_mib", DEFAULT_BUDGET_MIB)
    try:
        value = float(mib)
    except (TypeError, ValueError, OverflowError):
        value = float("nan")
    if not 0 < value <= MAX_BUDGET_MIB:         # also false for NaN
        raise ValueError(f"the RefDrop memory budget setting ({BUDGET_SETTING}) is {quoted(mib)}; it must be a "
                         f"number of MiB above 0 and at most {MAX_BUDGET_MIB}")
    return int(value * MIB)


def get_reference(name: str):
    """(store, info) of a named reference, from the cache or its file; FileNotFoundError names the choices."""
    path = reference_path(name)
    if not os.path.exists(path):
        known = ", ".join(list_references()) or "none saved yet"
        raise FileNotFoundError(f"no RefDrop reference named {quoted(name)} (saved references: {known}); "
                                "run a generation in Save mode first")
    mtime = os.path.getmtime(path)
    cached = _cache.get(path)
    if cached is None or cached[0] != mtime:
        _cache.clear()          # one reference in memory at a time
        budget = budget_bytes()
        try:
            store, info = load_reference(path, budget_bytes=budget)
        except ReferenceBudgetError:
            raise ReferenceBudgetError(
                f"the reference {quoted(name)} ({refdrop.format_mib(os.path.getsize(path))} on disk) does not fit the "
                f"RefDrop memory budget of {refdrop.format_mib(budget)}; raise the budget (Settings: "
                f"{BUDGET_SETTING}) or save a smaller reference") from None
        _cache[path] = cached = (mtime, store, info)
    return cached[1], cached[2]


def forget(path: str) -> None:
    """Drop a reference from the cache (its file was written again)."""
    _cache.pop(path, None)
