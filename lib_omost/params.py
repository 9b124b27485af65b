"""One declaration per feature parameter; UI, infotext, paste-back, xyz and API order all derive from it.

A ``Feature`` lists its ``Param``s once. The enable flag is implicit and always first (it is the
accordion). From the declaration come:

* the API argument order: ``[enabled, *params]`` (``Feature.arg_names``);
* argument validation with clear messages (``Feature.values``): type, range, choices;
* infotext entries ``"<Title> <label>: value"`` and their parsing back (``to_infotext`` / ``from_infotext``);
* xyz overrides stored on ``p`` (``override`` / ``overrides_of``), which also enable the feature for that cell;
* the WebUI components (``lib_omost.forge.ui`` builds them from the same list).

Pure Python: no gradio, no WebUI imports.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence

from lib_omost.quoting import quoted

BOOL, INT, FLOAT, CHOICE, TEXT, JSON = "bool", "int", "float", "choice", "text", "json"
KINDS = (BOOL, INT, FLOAT, CHOICE, TEXT, JSON)

OVERRIDES_ATTR = "omost_overrides"   # attribute set on a per-cell copy of p by xyz axes


class ParamError(ValueError):
    """An argument that does not fit its declaration; the message names the parameter and what is allowed."""


TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0", "")
ENABLED_LABEL = "Enabled"           # how messages name an accordion's enable flag (argument 0)


def parse_bool(value: Any, label: str) -> bool:
    """The one reading of every boolean argument (enable flags included): a bool, the number 0 or 1, or one of
    TRUE_WORDS / FALSE_WORDS in any case. Anything else is a ParamError naming ``label`` and what is allowed:
    ``bool("false")`` would be True."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ParamError(f"{label}: {quoted(value)} is not a boolean; allowed: true or false (also yes/no, on/off, "
                     f"1/0, any case)")


@dataclass(frozen=True)
class Param:
    name: str                       # identifier, unique inside its feature
    label: str                      # UI label; also the infotext key after the feature title
    kind: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""
    xyz: bool = True                # offered as an X/Y/Z plot axis (never for JSON)
    infotext: bool = True           # written to / read from the infotext
    when: tuple[tuple[str, tuple], ...] = ()   # (other param, its values) that must all hold for this one to
    #                                 matter: the UI hides it otherwise and the infotext leaves it out

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.kind == CHOICE and self.default not in self.choices:
            raise ValueError(f"{self.name}: default {self.default!r} is not among its choices")

    def coerce(self, value: Any) -> Any:
        """The value as this parameter's type, or ParamError naming what is allowed."""
        try:
            return self._coerce(value)
        except ParamError:
            raise
        except (TypeError, ValueError, OverflowError):
            raise ParamError(f"{self.label}: {quoted(value)} is not a valid {self.kind}; allowed: "
                             f"{self.allowed()}") from None

    def _coerce(self, value: Any) -> Any:
        if self.kind == BOOL:
            return parse_bool(value, self.label)
        if self.kind in (INT, FLOAT):
            if isinstance(value, bool):
                raise ParamError(f"{self.label}: expected a number, got {quoted(value)}")
            number = float(value)
            if not math.isfinite(number):
                raise ParamError(f"{self.label}: {quoted(value)} is not a finite number; allowed: {self.allowed()}")
            if self.kind == INT:
                if number != int(number):
                    raise ParamError(f"{self.label}: expected a whole number, got {quoted(value)}")
                number = int(number)
            self._check_range(number)
            return number
        if self.kind == CHOICE:
            text = str(value).strip()
            for choice in self.choices:
                if choice.lower() == text.lower():
                    return choice
            raise ParamError(f"{self.label}: {quoted(value)} is not one of {', '.join(self.choices)}")
        if self.kind == JSON:
            if isinstance(value, str):
                return value
            return json.dumps(value, ensure_ascii=False)
        return "" if value is None else str(value)

    def _check_range(self, number: float) -> None:
        low = self.minimum if self.minimum is not None else float("-inf")
        high = self.maximum if self.maximum is not None else float("inf")
        if not low <= number <= high:
            raise ParamError(f"{self.label}: {number:g} is outside the allowed range {low:g} to {high:g}")

    def allowed(self) -> str:
        """What this parameter accepts, in words (messages and the README's API tables)."""
        if self.kind == CHOICE:
            return " / ".join(self.choices)
        if self.kind in (INT, FLOAT):
            if self.minimum is None or self.maximum is None:
                return "whole numbers" if self.kind == INT else "numbers"
            return f"{self.minimum:g} to {self.maximum:g}"
        if self.kind == BOOL:
            return "True / False"
        return "JSON text" if self.kind == JSON else "text"

    def format(self, value: Any) -> str:
        if self.kind == FLOAT:
            return f"{value:g}"
        if self.kind == BOOL:
            return "True" if value else "False"
        if self.kind == JSON:
            return _json_text(value, separators=(",", ":"))
        return str(value)

    def is_default(self, value: Any) -> bool:
        if self.kind == JSON:
            return _json_text(value) == _json_text(self.default)
        return value == self.default


def _json_text(text: str, **dumps) -> str:
    """JSON text re-serialised (compact, indented, or canonical); text that is not JSON stays as it is."""
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, **dumps)
    except (TypeError, ValueError):
        return text


@dataclass(frozen=True)
class Feature:
    key: str                        # short identifier, e.g. "refdrop"
    title: str                      # accordion label, script title and API key
    params: tuple[Param, ...]
    enabled_label: str = ""         # infotext key of the enable flag (default: the title)
    by_name: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.key}: duplicate parameter names")
        object.__setattr__(self, "by_name", {p.name: p for p in self.params})

    # --- API order and validation -------------------------------------------------------------
    @property
    def arg_names(self) -> list[str]:
        return ["enabled", *(p.name for p in self.params)]

    def defaults(self) -> dict[str, Any]:
        return {"enabled": False, **{p.name: p.default for p in self.params}}

    def values(self, args: Sequence[Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Positional script args (missing trailing ones take defaults) plus xyz overrides, validated.

        Raises ParamError listing every bad argument. An override of any parameter enables the feature:
        sweeping a parameter of a disabled feature would otherwise silently change nothing.
        """
        if len(args) > len(self.params) + 1:
            raise ParamError(f"got {len(args)} arguments, expected at most {len(self.params) + 1} "
                             f"({', '.join(self.arg_names)})")
        raw = self.defaults()
        raw.update(zip(self.arg_names, args))
        mine = {k.split(".", 1)[1]: v for k, v in (overrides or {}).items() if k.split(".", 1)[0] == self.key}
        raw.update(mine)
        if any(name != "enabled" for name in mine):
            raw["enabled"] = True
        errors, out = [], {}
        try:
            out["enabled"] = parse_bool(raw["enabled"], ENABLED_LABEL)
        except ParamError as e:
            errors.append(str(e))
        for param in self.params:
            try:
                out[param.name] = param.coerce(raw[param.name])
            except ParamError as e:
                errors.append(str(e))
        if errors:
            raise ParamError("; ".join(errors))
        return out

    def in_use(self, param: Param, values: dict[str, Any]) -> bool:
        """Whether ``param`` matters with these values (e.g. an Advanced-mode setting in Simple mode does not)."""
        return all(values[name] in allowed for name, allowed in param.when)

    # --- infotext -------------------------------------------------------------------------------
    @property
    def enabled_key(self) -> str:
        return self.enabled_label or self.title

    def infotext_key(self, param: Param) -> str:
        return f"{self.title} {param.label}"

    def to_infotext(self, values: dict[str, Any]) -> dict[str, str]:
        """The infotext entries of one generation (nothing when the feature is off).

        Only values that are in use and differ from their defaults are written (``complete_pasted`` fills
        the rest back in when the text is pasted); an empty value is never written, since the WebUI's
        parser cannot read ``Key: ,`` back.
        """
        if not values.get("enabled"):
            return {}
        out = {self.enabled_key: "True"}
        for param in self.params:
            value = values[param.name]
            if param.infotext and self.in_use(param, values) and not param.is_default(value):
                text = param.format(value)
                if text.strip():
                    out[self.infotext_key(param)] = text
        return out

    def complete_pasted(self, params: dict[str, Any]) -> None:
        """Fill a pasted infotext's parameters in place: when this accordion was on, every key it left out
        (a default) gets its default, so pasting resets what the image did not change; JSON is indented
        again for the JSON box."""
        if str(params.get(self.enabled_key, "False")).lower() != "true":
            return
        for param in self.params:
            if not param.infotext:
                continue
            key = self.infotext_key(param)
            if key not in params:
                params[key] = param.format(param.default) if param.kind != JSON else param.default
            elif param.kind == JSON:
                params[key] = _json_text(str(params[key]), indent=2)

    def from_infotext(self, params: dict[str, str]) -> dict[str, Any]:
        """Values read back from a parsed infotext; absent keys keep their defaults, bad ones are reported."""
        out = self.defaults()
        out["enabled"] = self.enabled_in(params)
        for param in self.params:
            key = self.infotext_key(param)
            if param.infotext and key in params:
                out[param.name] = param.coerce(params[key])
        return out

    def enabled_in(self, params: dict[str, Any]) -> bool:
        """Whether a parsed infotext has this accordion on (``parse_bool`` of its enable flag; absent: off)."""
        return parse_bool(params.get(self.enabled_key, False), self.enabled_key)

    # --- xyz ------------------------------------------------------------------------------------
    def xyz_params(self) -> list[Param]:
        return [p for p in self.params if p.xyz and p.kind != JSON]

    def xyz_label(self, param: Param) -> str:
        return f"[{self.title}] {param.label}"


def override(p, feature: Feature, param: Param, value: Any) -> None:
    """Record an xyz cell's value on its copy of ``p`` (a new dict: cells never share one)."""
    value = param.coerce(value)
    setattr(p, OVERRIDES_ATTR, {**getattr(p, OVERRIDES_ATTR, {}), f"{feature.key}.{param.name}": value})


def overrides_of(p) -> dict[str, Any]:
    return dict(getattr(p, OVERRIDES_ATTR, {}) or {})


def markdown_table(feature: Feature) -> str:
    """The feature's API argument table for the README (a test keeps the README equal to this)."""
    rows = ["| # | argument | label (infotext key after the title) | type | default | allowed |",
            "|---|---|---|---|---|---|",
            f"| 0 | enabled | {feature.enabled_key} | bool | False | True / False |"]
    for i, p in enumerate(feature.params, start=1):
        allowed = p.allowed()
        default = "the example canvas" if p.kind == JSON else (p.format(p.default) if p.default != "" else '""')
        rows.append(f"| {i} | {p.name} | {p.label} | {p.kind} | {default} | {allowed} |")
    return "\n".join(rows)
