"""Safe parsing of an Omost LLM answer (or bare canvas code) into a Canvas.

Nothing is ever executed or evaluated: each top-level statement is parsed with ``ast.parse`` (which only
builds a syntax tree) and accepted only if it is one of

    canvas = Canvas()
    canvas.set_global_description(<literal arguments>)
    canvas.add_local_description(<literal arguments>)

(comments and blank lines aside), where a literal is a string, a number or a list of strings, passed by
position or by keyword. Everything else is rejected with a CanvasError naming the line.

The answer is read line by line: the fence (```python, ```py or a bare ```) is located, lines are grouped
into statements by a resumable scanner, and each complete statement is parsed once. So feeding a stream
chunk by chunk (IncrementalParser) costs about as much in total as one parse of the whole answer, and
incomplete text (streaming, or an answer cut by max_new_tokens) yields every complete call so far.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from lib_omost.canvas.colors import correct_color_name
from lib_omost.canvas.fuzzy import correct_phrase, unique_closest
from lib_omost.canvas.geometry import AREAS, LOCATIONS, OFFSETS
from lib_omost.canvas.model import (
    MAX_INPUT_CHARS,
    MAX_LINES,
    MAX_NUMBER,
    MAX_REGIONS,
    Canvas,
    CanvasError,
    GlobalRegion,
    Region,
    check_text_total,
    global_text_chars,
    is_number,
    located_region,
    region_text_chars,
    text_problem,
)
from lib_omost.canvas.scanner import StatementScanner
from lib_omost.quoting import QUOTE_CHARS, quoted, shortened

MAX_ANSWER_CHARS = MAX_INPUT_CHARS

GLOBAL_METHOD = "set_global_description"
LOCAL_METHOD = "add_local_description"
PARAMETERS = {
    GLOBAL_METHOD: ("description", "detailed_descriptions", "tags", "HTML_web_color_name"),
    LOCAL_METHOD: ("location", "offset", "area", "distance_to_viewer", "description", "detailed_descriptions",
                   "tags", "atmosphere", "style", "quality_meta", "HTML_web_color_name"),
}
# arguments a call cannot do without; the other (text) arguments default to empty, with a note
REQUIRED = {
    GLOBAL_METHOD: ("description", "HTML_web_color_name"),
    LOCAL_METHOD: ("location", "offset", "area", "distance_to_viewer", "description", "HTML_web_color_name"),
}
_LIST_PARAMETERS = frozenset({"detailed_descriptions"})
_NUMBER_PARAMETERS = frozenset({"distance_to_viewer"})

# words that name the same thing in enum phrases ("top left" = "on the top-left"), and filler words
_STOPWORDS = frozenset({"on", "in", "at", "the", "a", "an", "to", "of", "area", "sized", "size", "slightly",
                        "offset", "side", "corner", "part"})
_SYNONYMS = {
    "location": {"centre": "center", "middle": "center", "central": "center", "centered": "center",
                 "upper": "top", "lower": "bottom"},
    "offset": {"top": "upper", "bottom": "lower", "up": "upper", "down": "lower", "none": "no"},
    "area": {"big": "large", "tiny": "small", "little": "small", "mid": "medium", "wide": "horizontal",
             "tall": "vertical"},
}
_ENUMS = {"location": LOCATIONS, "offset": OFFSETS, "area": AREAS}

_FENCE = "```"
_CODE_LANGUAGES = frozenset({"", "python", "py", "python3"})
# a line that starts bare (unfenced) code: an import, "canvas", or a (dotted) name followed by "=" or "("
_CODE_START = re.compile(r"(?:import|from)\s|canvas\b|[A-Za-z_][\w.]*(?:\(|\s*=)")
_ALLOWED_SHAPES = "canvas = Canvas(), canvas.set_global_description(...) and canvas.add_local_description(...)"
_COMPOUND = {ast.FunctionDef: "function definitions", ast.AsyncFunctionDef: "function definitions",
             ast.ClassDef: "class definitions", ast.If: "if blocks", ast.For: "for loops",
             ast.AsyncFor: "for loops", ast.While: "while loops", ast.With: "with blocks",
             ast.AsyncWith: "with blocks", ast.Try: "try blocks", ast.Import: "imports",
             ast.ImportFrom: "imports", ast.Delete: "del statements", ast.Global: "global statements",
             ast.Nonlocal: "nonlocal statements", ast.AugAssign: "augmented assignments",
             ast.AnnAssign: "annotated assignments", ast.Return: "return statements",
             ast.Raise: "raise statements", ast.Assert: "assert statements", ast.Pass: "pass statements",
             ast.Break: "break statements", ast.Continue: "continue statements", ast.Match: "match blocks"}
# the same words for a block's header line alone, which ast.parse rejects while the block streams in
_HEADERS = {"def": "function definitions", "class": "class definitions", "if": "if blocks", "for": "for loops",
            "while": "while loops", "with": "with blocks", "try": "try blocks", "match": "match blocks",
            "@": "decorated definitions", "import": "imports", "from": "imports"}
_HEADER_START = re.compile(r"(?:async\s+)?(def|class|if|for|while|with|try|match|import|from)\b|(@)")


@dataclass
class ParseResult:
    canvas: Canvas
    truncated: bool = False
    notes: list[str] = field(default_factory=list)


# ---- literal arguments -------------------------------------------------------------------------------

def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _describe(node: ast.AST) -> str:
    """Why an expression is not an allowed literal, naming the most telling part of it."""
    dunder = _first_dunder(node)
    if dunder is not None:
        return f"dunder names ({dunder}) are not allowed"
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute):
            return f"attribute access (.{shortened(sub.attr, QUOTE_CHARS)}) is not allowed in arguments"
        if isinstance(sub, ast.Call):
            return "calls are not allowed in arguments (only literal values)"
        if isinstance(sub, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return "comprehensions are not allowed"
        if isinstance(sub, ast.JoinedStr):
            return "f-strings are not allowed (write the plain string)"
        if isinstance(sub, ast.Lambda):
            return "lambda is not allowed"
        if isinstance(sub, (ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            return f"{type(sub).__name__} expressions are not allowed"
    if isinstance(node, ast.Name):
        return f"the name {quoted(node.id)} is not allowed: arguments must be literal strings, numbers or lists of strings"
    if isinstance(node, ast.Starred):
        return "*arguments are not allowed"
    if isinstance(node, (ast.Dict, ast.Set)):
        return f"{type(node).__name__.lower()} literals are not allowed"
    if isinstance(node, ast.Constant):
        return f"{type(node.value).__name__} literals are not allowed here"
    if isinstance(node, ast.Subscript):
        return "subscripts are not allowed"
    return f"expressions ({type(node).__name__}) are not allowed: write the literal value"


def _first_dunder(node: ast.AST) -> str | None:
    """The first dunder name or attribute in an expression (``__import__``, ``.__class__``), if any."""
    for sub in ast.walk(node):
        name = sub.id if isinstance(sub, ast.Name) else sub.attr if isinstance(sub, ast.Attribute) else ""
        if _is_dunder(name):
            return shortened(name, QUOTE_CHARS)
    return None


def _scalar(node: ast.AST, line: int) -> str | int | float:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                raise CanvasError(f"a string: {problem}", line)
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not is_number(value):
                raise CanvasError(f"the number {quoted(value)} is out of range (|x| <= {MAX_NUMBER:g})", line)
            return value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float)):
        value = _scalar(node.operand, line)
        return -value if isinstance(node.op, ast.USub) else value
    raise CanvasError(_describe(node), line)


def _literal(node: ast.AST, line: int) -> str | int | float | list[str]:
    """The value of a literal argument: a string, a number, or a list (or tuple) of strings."""
    if isinstance(node, (ast.List, ast.Tuple)):
        if len(node.elts) > MAX_LINES:
            raise CanvasError(f"a list of {len(node.elts)} items is too long (at most {MAX_LINES})", line)
        items = [_scalar(e, line + e.lineno - node.lineno) for e in node.elts]
        for e, item in zip(node.elts, items):
            if not isinstance(item, str):
                raise CanvasError(f"lists may hold only strings, got {quoted(item)}",
                                  line + e.lineno - node.lineno)
        return items
    return _scalar(node, line)


# ---- statements → canvas ----------------------------------------------------------------------------

class _CanvasBuilder:
    """Checks parsed statements against the allow-list and collects the canvas they describe."""

    def __init__(self) -> None:
        self.global_region: GlobalRegion | None = None
        self.global_line: int | None = None
        self.regions: list[Region] = []
        self.text_chars = 0  # of the calls so far (MAX_CANVAS_TEXT_CHARS)
        self.notes: list[str] = []
        self.created_at: int | None = None  # line of canvas = Canvas()
        self.first_call_at: int | None = None

    def statement(self, node: ast.stmt, first_line: int) -> None:
        # a decorated definition starts at its first decorator
        line = first_line + min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", ())]) - 1
        if isinstance(node, ast.Assign):
            self._assignment(node, line)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            self._call(node.value, line, first_line)
        elif isinstance(node, ast.Expr):
            raise CanvasError(f"a bare expression is not allowed ({_describe(node.value)}); "
                              f"only {_ALLOWED_SHAPES}", line)
        else:
            what = "decorated definitions" if getattr(node, "decorator_list", None) else \
                _COMPOUND.get(type(node), f"{type(node).__name__} statements")
            raise CanvasError(f"{what} are not allowed; only {_ALLOWED_SHAPES}", line)

    def _assignment(self, node: ast.Assign, line: int) -> None:
        targets = [ast.unparse(t)[:40] for t in node.targets]
        if targets != ["canvas"]:
            raise CanvasError(f"only `canvas = Canvas()` may be assigned; got an assignment to "
                              f"{' = '.join(targets)}", line)
        value = node.value
        if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "Canvas"
                and not value.args and not value.keywords):
            raise CanvasError(f"canvas may only be assigned `Canvas()` (no arguments), got "
                              f"{ast.unparse(value)[:40]!r}", line)
        if self.created_at is not None:
            raise CanvasError(f"a second `canvas = Canvas()` (the first is at line {self.created_at}); "
                              "one program describes one canvas", line)
        if self.first_call_at is not None:
            raise CanvasError(f"`canvas = Canvas()` after canvas calls (line {self.first_call_at}) would "
                              "discard them", line)
        self.created_at = line

    def _call(self, call: ast.Call, line: int, first_line: int) -> None:
        func = call.func
        if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id == "canvas" and not _is_dunder(func.attr)):
            dunder = _first_dunder(func)
            if dunder is not None:
                raise CanvasError(f"dunder names ({dunder}) are not allowed; only {_ALLOWED_SHAPES}", line)
            raise CanvasError(f"calling {ast.unparse(func)[:60]}() is not allowed; only {_ALLOWED_SHAPES}",
                              line)
        method = func.attr
        if method not in PARAMETERS:
            near = unique_closest(method, PARAMETERS, 3)
            hint = f" (did you mean {near}?)" if near else ""
            raise CanvasError(f"unknown method canvas.{shortened(method, QUOTE_CHARS)}{hint}; only {GLOBAL_METHOD} and "
                              f"{LOCAL_METHOD}", line)
        arguments = self._arguments(method, call, line, first_line)
        if self.first_call_at is None:
            self.first_call_at = line
        if method == GLOBAL_METHOD:
            self._set_global(arguments, line)
        else:
            self._add_local(arguments, line)

    def _arguments(self, method: str, call: ast.Call, line: int, first_line: int) -> dict:
        names = PARAMETERS[method]
        if len(call.args) > len(names):
            raise CanvasError(f"{method} takes at most {len(names)} positional arguments, got {len(call.args)}",
                              line)
        pairs: list[tuple[str, ast.AST]] = []
        for name, node in zip(names, call.args):
            if isinstance(node, ast.Starred):
                raise CanvasError("*arguments are not allowed", first_line + node.lineno - 1)
            pairs.append((name, node))
        for kw in call.keywords:
            kw_line = first_line + kw.lineno - 1
            if kw.arg is None:
                raise CanvasError("**arguments are not allowed", kw_line)
            if kw.arg not in names:
                near = unique_closest(kw.arg, names, 3)
                hint = f" (did you mean {near}?)" if near else ""
                raise CanvasError(f"{method} has no argument {quoted(kw.arg)}{hint}; its arguments: "
                                  f"{', '.join(names)}", kw_line)
            pairs.append((kw.arg, kw.value))
        values: dict[str, object] = {}
        for name, node in pairs:
            arg_line = first_line + node.lineno - 1
            if name in values:
                raise CanvasError(f"{method} got {name!r} twice", arg_line)
            values[name] = self._typed(name, _literal(node, arg_line), arg_line)
        missing = [n for n in REQUIRED[method] if n not in values]
        if missing:
            raise CanvasError(f"{method} is missing {', '.join(missing)}", line)
        for name in names:
            if name not in values:
                values[name] = [] if name in _LIST_PARAMETERS else ""
                self.notes.append(f"line {line}: {method} has no {name}; left empty")
        return values

    @staticmethod
    def _typed(name: str, value, line: int):
        if name in _LIST_PARAMETERS:
            if not isinstance(value, list):
                raise CanvasError(f"{name} must be a list of strings, got {quoted(value)}", line)
        elif name in _NUMBER_PARAMETERS:
            if isinstance(value, (str, list)):
                raise CanvasError(f"{name} must be a number > 0, got {quoted(value)}", line)
            if not value > 0:
                raise CanvasError(f"{name} must be > 0 (larger = farther), got {quoted(value)}", line)
        elif not isinstance(value, str):
            raise CanvasError(f"{name} must be a string, got {quoted(value)}", line)
        return value

    def _enum(self, kind: str, value: str, line: int) -> str:
        table = _ENUMS[kind]
        fixed = correct_phrase(value, table, _SYNONYMS[kind], _STOPWORDS)
        if fixed is None:
            raise CanvasError(f"{kind} {quoted(value)} is not one of the allowed values: "
                              f"{', '.join(map(repr, table))}", line)
        if fixed != value:
            self.notes.append(f"line {line}: {kind} {quoted(value)} read as {fixed!r}")
        return fixed

    def _color(self, value: str, line: int) -> str:
        fixed = correct_color_name(value)
        if fixed is None:
            raise CanvasError(f"HTML_web_color_name {quoted(value)} is not one of the 149 HTML colour names "
                              "(e.g. 'darkgoldenrod', 'skyblue', 'white')", line)
        if fixed != value:
            self.notes.append(f"line {line}: colour {quoted(value)} read as {fixed!r}")
        return fixed

    def _set_global(self, a: dict, line: int) -> None:
        if self.global_line is not None:
            raise CanvasError(f"{GLOBAL_METHOD} is called a second time (first at line {self.global_line})",
                              line)
        self.global_region = GlobalRegion(description=a["description"],
                                          detailed_descriptions=a["detailed_descriptions"], tags=a["tags"],
                                          color=self._color(a["HTML_web_color_name"], line))
        self.global_line = line
        self._count_text(global_text_chars(self.global_region), line)

    def _add_local(self, a: dict, line: int) -> None:
        if len(self.regions) >= MAX_REGIONS:
            raise CanvasError(f"too many regions (at most {MAX_REGIONS})", line)
        self.regions.append(located_region(
            self._enum("location", a["location"], line), self._enum("offset", a["offset"], line),
            self._enum("area", a["area"], line), float(a["distance_to_viewer"]),
            description=a["description"], detailed_descriptions=a["detailed_descriptions"], tags=a["tags"],
            atmosphere=a["atmosphere"], style=a["style"], quality_meta=a["quality_meta"],
            color=self._color(a["HTML_web_color_name"], line)))
        self._count_text(region_text_chars(self.regions[-1]), line)

    def _count_text(self, chars: int, line: int) -> None:
        self.text_chars += chars
        check_text_total(self.text_chars, line)

    def canvas(self) -> Canvas:
        return Canvas(global_region=self.global_region or GlobalRegion(), regions=list(self.regions))


def _parse_statement(text: str, first_line: int) -> list[ast.stmt]:
    """ast.parse of one statement (never compiled to code), errors mapped to absolute line numbers."""
    try:
        return ast.parse(text).body
    except SyntaxError as exc:
        line = first_line + (exc.lineno or 1) - 1
        header = _HEADER_START.match(text) if not text[:1].isspace() else None
        if header:
            what = _HEADERS[header.group(1) or header.group(2)]
            raise CanvasError(f"{what} are not allowed; only {_ALLOWED_SHAPES}", first_line) from None
        if "integer string conversion" in exc.msg:      # Python's digit limit, raised while parsing
            raise CanvasError(f"a number of thousands of digits is out of range (|x| <= {MAX_NUMBER:g})", line) from None
        raise CanvasError(f"invalid Python syntax: {shortened(exc.msg, QUOTE_CHARS * 2)}", line) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        # null bytes, integer literals over the digit limit, absurd nesting
        raise CanvasError(f"rejected by the Python parser: {type(exc).__name__}: {str(exc)[:80]}",
                          first_line) from None


def _ends_at_top_level(lines: list[str]) -> bool:
    """Cheap guess that code lines end with a whole statement: the last non-blank line is not indented
    (in Omost code only the lines inside a call are). A wrong guess only costs one failed parse."""
    for line in reversed(lines):
        if line.strip():
            return not line[0].isspace()
    return True


def _joined(statements: list[tuple[str, int]]) -> str:
    """Statement texts joined into one source, blank lines keeping every statement on its own line numbers."""
    parts, line = [], statements[0][1]
    for text, first in statements:
        parts += ["\n" * (first - line), text, "\n"]
        line = first + text.count("\n") + 1
    return "".join(parts)


def _could_begin_allowed(text: str) -> bool:
    """Whether a statement cut short could still become an allowed one (e.g. ``canvas = Canv``)."""
    squashed = "".join(text.split())
    return any(shape.startswith(squashed) for shape in
               ("canvas=Canvas()", f"canvas.{GLOBAL_METHOD}(", f"canvas.{LOCAL_METHOD}("))


# ---- the answer, line by line -----------------------------------------------------------------------

class IncrementalParser:
    """Parses an answer fed in chunks. ``feed`` returns everything complete so far; ``finish`` ends the
    stream. Each line and each statement is processed once, so the total work is linear in the answer."""

    def __init__(self) -> None:
        self._builder = _CanvasBuilder()
        self._scanner = StatementScanner()
        self._partial: list[str] = []  # pieces of the line not yet ended by a newline
        self._held_cr = False  # a chunk ended in "\r": it may be half of "\r\n"
        self._line_no = 0  # lines completed so far
        self._chars = 0
        self._blank = True  # nothing but whitespace so far
        self._mode = "seek"  # seek → code → done; "skip" inside a non-Python fenced block
        self._fenced = False
        self._skipped: list[str] = []
        self._code: list[str] = []  # complete code lines not yet parsed
        self._code_start = 0  # line number of self._code[0]
        self._result: ParseResult | None = None
        self._finished: ParseResult | None = None
        self._error: CanvasError | None = None

    def feed(self, chunk: str) -> ParseResult:
        """Add the next piece of the answer; returns everything complete so far (``truncated`` stays True
        until the code block closes). A CanvasError is final: later calls raise it again."""
        return self._guarded(self._feed, chunk)

    def finish(self) -> ParseResult:
        """Ends the stream: the last line (no newline needed) is read; an answer cut inside a statement
        or without its closing fence is reported in ``notes`` and ``truncated``."""
        return self._guarded(self._finish)

    def _guarded(self, step, *args) -> ParseResult:
        if self._error is not None:
            raise self._error
        try:
            return step(*args)
        except CanvasError as exc:
            self._error = exc
            raise

    def _feed(self, chunk: str) -> ParseResult:
        if self._finished is not None:
            raise RuntimeError("feed() after finish()")
        self._chars += len(chunk)
        if self._blank and not chunk.isspace() and chunk:
            self._blank = False
        if self._chars > MAX_ANSWER_CHARS:
            raise CanvasError(f"the answer is too long ({self._chars} characters; at most {MAX_ANSWER_CHARS})")
        if self._held_cr:
            chunk = "\r" + chunk
            self._held_cr = False
        if chunk.endswith("\r"):
            chunk, self._held_cr = chunk[:-1], True
        if "\r" in chunk:
            chunk = chunk.replace("\r\n", "\n").replace("\r", "\n")
        if "\n" in chunk:
            lines = chunk.split("\n")
            self._partial.append(lines[0])
            lines[0] = "".join(self._partial)
            tail = lines.pop()
            self._partial = [tail] if tail else []
            for line in lines:
                self._line_no += 1
                if self._mode == "code" and not line.lstrip().startswith(_FENCE):
                    self._code_line(line, self._line_no)  # the common case, kept cheap
                else:
                    self._line(line, self._line_no)
            self._flush()
        elif chunk:
            self._partial.append(chunk)
        if self._result is None:
            self._result = ParseResult(self._builder.canvas(), truncated=self._mode != "done",
                                       notes=self._notes())
        return self._result

    def _finish(self) -> ParseResult:
        if self._finished is not None:
            return self._finished
        if self._held_cr:
            self._held_cr = False
            self._feed("\n")
        if self._blank:
            raise CanvasError("the answer is empty")
        self._flush()
        last = "".join(self._partial)
        self._partial = []
        if last:
            self._line_no += 1
        if last.lstrip().startswith("`"):  # the last line is (the start of) a fence
            if self._mode == "seek":
                self._mode, self._fenced = "code", True  # cut inside the opening fence line
            elif self._mode == "code" and last.lstrip().startswith(_FENCE):
                self._close_code(self._line_no)
            last = ""
        elif self._mode == "seek" and self._starts_code(last):
            self._mode = "code"
        if self._mode in ("seek", "skip"):
            raise CanvasError("no canvas code found: expected a ```python block or code starting with "
                              "`canvas = Canvas()`")
        cut = self._end_of_code(last) if self._mode == "code" else []
        self._finished = ParseResult(self._builder.canvas(), truncated=bool(cut), notes=self._notes() + cut)
        return self._finished

    def _notes(self) -> list[str]:
        return self._skipped + self._builder.notes

    @staticmethod
    def _starts_code(line: str) -> bool:
        return bool(_CODE_START.match(line.lstrip()))

    def _line(self, line: str, line_no: int) -> None:
        mode = self._mode
        if mode == "done":
            return
        fence = line.lstrip().startswith(_FENCE)
        if mode == "code":
            if fence:
                self._close_code(line_no)
            else:
                self._code_line(line, line_no)
        elif mode == "skip":
            if fence:
                self._mode = "seek"
        elif fence:
            language = line.lstrip()[3:].strip().lower()
            if language in _CODE_LANGUAGES:
                self._mode, self._fenced = "code", True
                self._result = None
            else:
                self._mode = "skip"
                self._skipped.append(f"line {line_no}: skipped a ```{language} block (not Python)")
                self._result = None
        elif self._starts_code(line):
            self._mode = "code"
            self._code_line(line, line_no)

    def _code_line(self, line: str, line_no: int) -> None:
        if not self._code:
            self._code_start = line_no
        self._code.append(line)

    def _flush(self) -> None:
        """Parse the complete code lines gathered so far, as few ast.parse calls as possible: all lines at
        once when they look like whole statements (a whole answer costs one parse); else the scanner
        splits them, keeping an unfinished statement for later lines, and the complete statements are
        parsed together, or one by one when that fails, so the first error is reported in program order."""
        if not self._code:
            return
        lines, start = self._code, self._code_start
        self._code = []
        if not self._scanner.is_open and _ends_at_top_level(lines) and self._parse_batch("\n".join(lines), start):
            return
        complete = []
        for offset, line in enumerate(lines):
            statement = self._scanner.push(line, start + offset)
            if statement is not None:
                complete.append(statement)
        if len(complete) > 1 and self._parse_batch(_joined(complete), complete[0][1]):
            return
        for statement in complete:
            self._statement(*statement)

    def _parse_batch(self, text: str, first_line: int) -> bool:
        """Parse whole statements in one go; False (nothing done) if the text does not parse."""
        try:
            body = ast.parse(text).body
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
            return False
        for node in body:
            self._builder.statement(node, first_line)
        self._result = None
        return True

    def _statement(self, text: str, first_line: int) -> None:
        for node in _parse_statement(text, first_line):
            self._builder.statement(node, first_line)
        self._result = None

    def _close_code(self, line_no: int) -> None:
        self._flush()
        pending = self._scanner.pending()
        if pending is not None:
            raise CanvasError(f"the statement starting at line {pending[1]} is not complete before the closing "
                              f"``` at line {line_no} (an unclosed bracket or string)", pending[1])
        self._mode = "done"
        self._result = None

    def _end_of_code(self, last: str) -> list[str]:
        """The stream ended inside the code: read its last line and say what was cut."""
        statement = self._scanner.push(last, self._line_no, final=True) if last else None
        if statement is not None:
            try:
                self._statement(*statement)
            except CanvasError:
                # a last line without newline that is complete yet invalid is a cut only if it could
                # still have become an allowed statement (``canvas = Canv``); otherwise it is rejected
                if not _could_begin_allowed(statement[0]):
                    raise
                return [f"the answer was cut at line {statement[1]}; its incomplete last statement was ignored"]
        pending = self._scanner.pending()
        if pending is not None:
            return [(f"the answer was cut inside the statement starting at line {pending[1]}; "
                     "that statement was ignored")]
        return ["the answer was cut: its ``` block has no closing fence"] if self._fenced else []


def parse_answer(text: str) -> ParseResult:
    """Parse a whole LLM answer (fenced block, closing fence optional) or bare canvas code."""
    if not isinstance(text, str):
        raise CanvasError(f"expected the answer as text, got {type(text).__name__}")
    parser = IncrementalParser()
    parser.feed(text)
    return parser.finish()
