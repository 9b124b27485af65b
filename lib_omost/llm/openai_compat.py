"""OpenAI-compatible backend: POST /v1/chat/completions with server-sent-event (SSE) streaming.

Works with llama.cpp's llama-server, Ollama (/v1), vLLM, LM Studio and TGI's messages API. httpx is imported
lazily. The API key is held in a `Secret`: it is sent in the Authorization header and nowhere else.

Nothing a server sends is trusted: every event's shape is checked (anything unexpected is an LLMError saying
"the server sent ..."), every line, event and body is read up to a limit that follows the answer cap, a
redirect is reported and never followed (the key stays with the host it was meant for), and every message
leaves the backend through `_boundary`, which masks the key and the URL's credentials (`redaction.redact`);
the answer text itself is masked as it streams.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from json.decoder import scanstring as _scanstring  # the C string scanner json.loads uses
from typing import Iterator
from urllib.parse import urlsplit

from lib_omost.llm.conversation import estimate_tokens
from lib_omost.llm.events import DEFAULT_MAX_ANSWER_CHARS, Finished, GenerationSettings, LLMError, TextDelta
from lib_omost.llm.redaction import Secret, StreamRedactor, redact, shown_url, split_credentials, url_secrets

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 120.0
SHOWN_CHARS = 300  # of a server's error body or a malformed line
MAX_ERROR_BODY_BYTES = 64 * 1024  # an HTTP error body is read this far (only its start is shown)
MAX_MODELS_BYTES = 16 * 2 ** 20  # a /v1/models list (hosted services list hundreds of models)
# SSE lines one answer may carry without answer text (role, finish and usage events, keep-alive comments):
# a server that sends only those streams without end, though no answer or memory grows
MAX_IDLE_LINES = 100_000
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # what an API key may hold to travel in an HTTP header


def max_event_bytes(max_answer_chars: int) -> int:
    """The most bytes one piece of server data may take (an SSE line, one event, a non-streamed answer):
    enough for a whole answer at the cap (JSON writes a character in at most 12 bytes) and its envelope."""
    return 12 * max_answer_chars + 64 * 1024


def api_key_from_env(variable: str) -> Secret:
    value = os.environ.get(variable, "")
    if not value.strip():
        raise ValueError(f"the environment variable {variable!r} holding the API key is not set or empty")
    return Secret(value.strip())


def api_root(base_url: str) -> str:
    """The '.../v1' root for a base URL given as 'http://host:port', '.../v1' or '.../v1/chat/completions'."""
    url = (base_url or "").strip().rstrip("/")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the server URL must look like http://host:port or https://host/v1, "
                         f"got {shown_url(str(base_url))!r}")
    for suffix in ("/chat/completions", "/models"):
        if url.endswith("/v1" + suffix):
            url = url[: -len(suffix)]
    return url if url.endswith("/v1") else url + "/v1"


@dataclass(frozen=True, repr=False)
class EndpointConfig:
    """An OpenAI-compatible server. model None = the first model the server lists at /v1/models.
    context_length None = read it from /v1/models where the server says (vLLM, llama.cpp), else unknown.
    The repr shows neither the key nor credentials in the URL."""

    base_url: str
    model: str | None = None
    api_key: Secret | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    context_length: int | None = None

    def __post_init__(self):
        api_root(self.base_url)  # validates
        if isinstance(self.api_key, str):
            object.__setattr__(self, "api_key", Secret(self.api_key.strip()) if self.api_key.strip() else None)
        elif self.api_key is not None and not isinstance(self.api_key, Secret):
            raise TypeError("api_key must be a string, a Secret or None")
        if self.api_key is not None and not _HEADER_SAFE.fullmatch(self.api_key.reveal()):
            raise ValueError("the API key may hold only printable ASCII characters without spaces (an HTTP "
                             "header carries nothing else); the key is not shown here")
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        if self.model is not None and not self.model.strip():
            object.__setattr__(self, "model", None)
        if self.context_length is not None and (not isinstance(self.context_length, int)
                                                or self.context_length < 1):
            raise ValueError(f"context_length must be None or an integer >= 1, got {self.context_length!r}")

    def __repr__(self) -> str:
        return (f"EndpointConfig(base_url={shown_url(self.base_url)!r}, model={self.model!r}, "
                f"api_key={self.api_key!r}, connect_timeout={self.connect_timeout!r}, "
                f"read_timeout={self.read_timeout!r}, context_length={self.context_length!r})")

    @property
    def root(self) -> str:
        return api_root(self.base_url)

    @property
    def shown_root(self) -> str:
        """The root as messages show it (credentials masked)."""
        return shown_url(self.root)

    def secrets(self) -> tuple[str, ...]:
        """What messages must never show: the API key and the URL's credentials."""
        key = (self.api_key.reveal(),) if self.api_key is not None else ()
        return key + url_secrets(self.base_url)


# ---- quoting what a server sent ---------------------------------------------------------------------

def quoted(raw: bytes | str, secrets: tuple[str, ...] = ()) -> str:
    """Server text as a message quotes it: secrets masked first (so no part of one survives the cut), then
    at most SHOWN_CHARS characters, repr-quoted (control characters escaped)."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return repr(_shortened(redact(text, secrets)))


def _shortened(text: str) -> str:
    return text[:SHOWN_CHARS] + ("..." if len(text) > SHOWN_CHARS else "")


def _json(text: str | bytes):
    """json.loads; JSON nested too deeply for the parser is the ValueError it is (not a RecursionError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def server_message(body: bytes, secrets: tuple[str, ...] = ()) -> str:
    """The human part of an error body, secrets masked and shortened: OpenAI's {"error": {"message"}},
    {"error": "..."}, {"message"}, {"detail"}, or the text itself."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        obj = _json(text)
    except ValueError:
        obj = None
    message = text
    if isinstance(obj, dict):
        error = obj.get("error")
        candidates = (error.get("message") if isinstance(error, dict) else None, error, obj.get("message"),
                      obj.get("detail"))
        message = next((c for c in candidates if isinstance(c, str) and c), text)
    if not message:
        return "(empty response body)"
    return _shortened(redact(message, secrets))


def http_error(status: int, reason: str, message: str) -> str:
    hint = {401: "check the API key", 403: "check the API key and its permissions",
            404: "check the server URL and the model name"}.get(status)
    text = f"the server answered HTTP {status} {reason}: {message}"
    return f"{text} ({hint})" if hint else text


def _closed_mid_answer(tokens: int, detail: str) -> str:
    return f"the connection closed mid-answer after {tokens} tokens ({detail})"


# ---- SSE ----------------------------------------------------------------------------------------------

class SSEError(ValueError):
    """Bytes that are not server-sent events. The message never quotes the server: `line` holds the raw line,
    which the caller quotes (it knows the secrets to mask)."""

    def __init__(self, message: str, line: bytes = b""):
        super().__init__(message)
        self.line = line


class EmptyStream(LLMError):
    """The server ended the stream without a token, a finish reason or [DONE]."""


@dataclass
class SSEDecoder:
    """Bytes → events (event name, data), per the SSE format: `field: value` lines, a blank line ends an
    event, `data` lines are joined with newlines, lines starting with ':' are comments. Any other line is
    malformed (an OpenAI stream never has one). A line, or an event's data, longer than `max_bytes` is an
    SSEError; a line that arrives in many chunks is assembled once, when its newline comes (linear time)."""

    max_bytes: int = max_event_bytes(DEFAULT_MAX_ANSWER_CHARS)
    _partial: list[bytes] = field(default_factory=list)  # the current line's pieces before its newline
    _partial_size: int = 0
    _data: list[str] = field(default_factory=list)
    _data_size: int = 0
    _event: str = ""
    line_number: int = 0
    idle: bool = True  # between events: no partial line, data or event name pending

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        head = single_event_head(chunk) if self.idle else None
        if head is not None and len(chunk) <= self.max_bytes:  # fast path: exactly one `data:` event
            self.line_number += 2
            return [("", chunk[head:-2].decode("utf-8", errors="replace"))]
        end = chunk.find(b"\n")
        if end < 0:
            self._hold(chunk)
            return []
        first, lines = chunk[:end], chunk[end + 1:].split(b"\n")
        if self._partial:
            self._hold(first)
            first = b"".join(self._partial)
            self._partial, self._partial_size = [], 0
        tail = lines.pop()
        events = []
        for line in (first, *lines):
            event = self._line(line)
            if event is not None:
                events.append(event)
        if tail:
            self._hold(tail)
        self.idle = not (self._partial or self._data or self._event)
        return events

    def close(self) -> list[tuple[str, str]]:
        """Events still pending when the stream ends (a last line without its newline, an event without
        its blank line)."""
        events = []
        last = b"".join(self._partial)
        self._partial, self._partial_size = [], 0
        for line in (last, b"") if last else (b"",):
            event = self._line(line)
            if event is not None:
                events.append(event)
        self.idle = not (self._data or self._event)
        return events

    def _hold(self, piece: bytes) -> None:
        self._partial.append(piece)
        self._partial_size += len(piece)
        self.idle = False
        if self._partial_size > self.max_bytes:
            raise SSEError(f"the server sent a line longer than {self.max_bytes:,} bytes (line "
                           f"{self.line_number + 1}); no event of an answer within the answer cap is that long")

    def _line(self, raw: bytes) -> tuple[str, str] | None:
        self.line_number += 1
        if len(raw) > self.max_bytes:
            raise SSEError(f"the server sent a line longer than {self.max_bytes:,} bytes (line "
                           f"{self.line_number}); no event of an answer within the answer cap is that long")
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            if not self._data:
                self._event = ""
                return None
            event = (self._event, "\n".join(self._data))
            self._data, self._data_size, self._event = [], 0, ""
            return event
        name, colon, value = raw.partition(b":")
        if not colon:
            raise SSEError(f"the server sent a line that is not a server-sent event (line {self.line_number})", raw)
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data_size += len(value)
            if self._data_size > self.max_bytes:
                raise SSEError(f"the server sent an event longer than {self.max_bytes:,} bytes (up to line "
                               f"{self.line_number}); no event of an answer within the answer cap is that long")
            self._data.append(value.decode("utf-8", errors="replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", errors="replace")
        elif name not in (b"", b"id", b"retry"):  # b"" = a comment line
            raise SSEError(f"the server sent a line that is not a server-sent event (line {self.line_number})", raw)
        return None


def single_event_head(chunk: bytes) -> int | None:
    """For a chunk that is exactly one `data:` line and its blank line, the length of `data:` / `data: `
    (where the value starts); else None."""
    if chunk.startswith(b"data:") and chunk.endswith(b"\n\n") and chunk.find(b"\n") == len(chunk) - 2:
        return 6 if chunk[5:6] == b" " else 5
    return None


# ---- HTTP --------------------------------------------------------------------------------------------

@dataclass
class _Reading:
    """One answer being read: its limit, the secrets to mask, the tokens counted so far."""

    secrets: tuple[str, ...] = ()
    max_bytes: int = max_event_bytes(DEFAULT_MAX_ANSWER_CHARS)
    max_idle_lines: int = MAX_IDLE_LINES
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    def sent(self, what: str, raw: bytes | str) -> LLMError:
        """The error for a server that sent something unexpected, quoting it (secrets masked)."""
        return LLMError(f"the server sent {what}: {quoted(raw, self.secrets)}")

    def seconds(self) -> float:
        return time.perf_counter() - self.start


@contextmanager
def _http_errors(config: EndpointConfig, reading: _Reading | None = None):
    """Translate httpx's exceptions into LLMErrors that say what happened and what to try."""
    import httpx

    root = config.shown_root
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise LLMError(f"no answer from {root} within the connect timeout of {config.connect_timeout:g} s "
                       f"(is the host reachable?)") from exc
    except httpx.ConnectError as exc:
        why = "connection refused" if "refused" in str(exc).lower() else str(exc) or type(exc).__name__
        raise LLMError(f"cannot connect to {root}: {why} (is the server running, and is the URL right?)") from exc
    except httpx.ReadTimeout as exc:
        raise LLMError(f"the server sent nothing for {config.read_timeout:g} s (read timeout); it may be busy or "
                       f"still loading the model: try again or raise the read timeout") from exc
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        detail = f"{type(exc).__name__}: {exc}"
        if reading is None:
            raise LLMError(f"the server at {root} closed the connection before answering ({detail})") from exc
        raise LLMError(_closed_mid_answer(reading.tokens, detail)) from exc
    except httpx.TimeoutException as exc:
        raise LLMError(f"the request to {root} timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise LLMError(f"the request to {root} failed: {type(exc).__name__}: {exc}") from exc


def _read_at_most(response, limit: int) -> tuple[bytes, bool]:
    """The body's first `limit` bytes, and whether that is all of it (the rest is never read)."""
    parts, size = [], 0
    for chunk in response.iter_bytes():
        if size + len(chunk) > limit:
            parts.append(chunk[:limit - size])
            return b"".join(parts), False
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts), True


def _model_list(body: bytes, secrets: tuple[str, ...], root: str) -> list[dict]:
    """The models of a /v1/models answer ({"data": [{"id": ...}, ...]}); entries without a string id are
    skipped; anything else is an LLMError quoting the answer."""
    try:
        obj = _json(body)
    except ValueError:
        obj = None
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        raise LLMError(f"the server's {root}/models answer is not an OpenAI model list "
                       f"({quoted(body, secrets)}); give the model name")
    return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


def _context_size(entry: dict) -> int | None:
    """A model entry's context size, when valid: vLLM's max_model_len, else llama.cpp's meta.n_ctx (what one
    request gets after -c is shared among -np slots; 0 while unloaded), else its meta.n_ctx_train."""
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
    for size in (entry.get("max_model_len"), meta.get("n_ctx"), meta.get("n_ctx_train")):
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            return size
    return None


# ---- the backend -----------------------------------------------------------------------------------

_FINISH = {"stop": "stop", "eos": "stop", "length": "length", "max_tokens": "length",
           "content_filter": "content_filter"}


class OpenAIBackend:
    """Chat with an OpenAI-compatible server (see events.Backend)."""

    def __init__(self, config: EndpointConfig):
        self.config = config
        self._secrets = config.secrets()
        self._root, self._basic_auth = split_credentials(config.root)  # requests never carry credentials
        self._models: list[dict] | None = None
        self._http = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"{self.config.model or 'the first model'} at {self.config.shown_root}"

    @contextmanager
    def _boundary(self):
        """Where messages leave the backend: every LLMError is redacted here and raised without its cause
        (an httpx exception's text may hold the URL's credentials)."""
        try:
            yield
        except LLMError as exc:
            raise LLMError(redact(str(exc), self._secrets)) from None

    def client(self):
        """The backend's httpx client, made once: connections are kept, and so is its TLS setup (loading the
        CA certificates takes tens of milliseconds; plain http:// servers skip it). Redirects are not
        followed (see _check)."""
        with self._lock:
            if self._http is None:
                import httpx

                headers = {"Accept": "application/json"}
                if self.config.api_key is not None:
                    headers["Authorization"] = "Bearer " + self.config.api_key.reveal()
                timeout = httpx.Timeout(connect=self.config.connect_timeout, read=self.config.read_timeout,
                                        write=self.config.read_timeout, pool=self.config.connect_timeout)
                self._http = httpx.Client(timeout=timeout, headers=headers, follow_redirects=False,
                                          auth=self._basic_auth, verify=self._root.startswith("https://"))
            return self._http

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def _fail(self, response) -> LLMError:
        body, _ = _read_at_most(response, MAX_ERROR_BODY_BYTES)
        return LLMError(http_error(response.status_code, response.reason_phrase, server_message(body, self._secrets)))

    def _check(self, response) -> None:
        """An LLMError for a redirect (never followed: the key would go to another address) or an HTTP error."""
        status = response.status_code
        if 300 <= status < 400:
            location = response.headers.get("location") or "(no Location header)"
            raise LLMError(f"the server redirected to {quoted(location, self._secrets)} (HTTP {status} "
                           f"{response.reason_phrase}); redirects are not followed, so the API key is never sent "
                           f"elsewhere: give that address as the server URL if you trust it")
        if status >= 400:
            raise self._fail(response)

    def models(self) -> list[dict]:
        """The server's /v1/models list (fetched once per backend)."""
        if self._models is None:
            with self._boundary(), _http_errors(self.config):
                with self.client().stream("GET", self._root + "/models") as response:
                    self._check(response)
                    body, complete = _read_at_most(response, MAX_MODELS_BYTES)
                if not complete:
                    raise LLMError(f"the server's {self.config.shown_root}/models answer is larger than "
                                   f"{MAX_MODELS_BYTES:,} bytes; give the model name")
                self._models = _model_list(body, self._secrets, self.config.shown_root)
        return self._models

    def model_name(self) -> str:
        if self.config.model is not None:
            return self.config.model
        models = self.models()
        if not models:
            raise LLMError(f"the server at {self.config.shown_root} lists no models; give the model name")
        return models[0]["id"]

    def count_tokens(self, messages: list[dict]) -> tuple[int, bool]:
        return estimate_tokens(messages), False

    def context_length(self) -> int | None:
        if self.config.context_length is not None:
            return self.config.context_length
        if self.config.model is None:
            entries = self.models()[:1]
        else:
            try:
                entries = [m for m in self.models() if m["id"] == self.config.model]
            except LLMError:  # the list is optional when the model is named: the context stays unknown
                return None
        sizes = [size for size in map(_context_size, entries) if size is not None]
        return sizes[0] if sizes else None

    def request_body(self, messages: list[dict], settings: GenerationSettings) -> dict:
        body = {"model": self.model_name(), "messages": messages, "stream": True,
                "temperature": float(settings.temperature), "top_p": float(settings.top_p),
                "max_tokens": settings.max_new_tokens}
        if settings.seed is not None:
            body["seed"] = settings.seed
        return body

    def stream(self, messages: list[dict], settings: GenerationSettings,
               stop: threading.Event) -> Iterator[TextDelta | Finished]:
        with self._boundary():
            body = self.request_body(messages, settings)
            reading = _Reading(self._secrets, max_event_bytes(settings.max_answer_chars))
            with _http_errors(self.config, reading):
                while True:
                    with self.client().stream("POST", self._root + "/chat/completions", json=body,
                                              headers={"Accept": "text/event-stream"}) as response:
                        if response.status_code in (400, 422) and "seed" in body:
                            error = self._fail(response)
                            if "seed" in str(error):  # a server that rejects the optional seed: ask without it
                                del body["seed"]
                                continue
                            raise error
                        self._check(response)
                        try:
                            yield from _read_stream(response, stop, reading)
                            return
                        except EmptyStream as exc:
                            empty = exc
                    raise self._unstreamed_error(body) or empty

    def _unstreamed_error(self, body: dict) -> LLMError | None:
        """The server's error for `body` asked without streaming, for one token; None when it has none.
        llama-cpp-python's server rejects a prompt longer than the context only after its stream began: the
        stream ends empty (the reason goes to its console), while the same request unstreamed gets it as an
        HTTP error. It closes the stream's connection right after the stream, so this asks on a new one."""
        import httpx

        shared = self.client()
        with httpx.Client(timeout=shared.timeout, headers=shared.headers, auth=self._basic_auth,
                          follow_redirects=False, verify=self._root.startswith("https://")) as fresh:
            response = fresh.post(self._root + "/chat/completions", json={**body, "stream": False, "max_tokens": 1})
            return self._fail(response) if response.status_code >= 400 else None


class ChunkTemplate:
    """Skips the full JSON parse of token events that differ from a learned one only in the content string.

    Servers repeat the same envelope (id, model, created, ...) around each token, one event per chunk. A
    chunk that starts with the learned prefix, ends with the learned suffix and has exactly one JSON string
    literal in between is, by the JSON grammar, the learned event with that content: only the literal is
    decoded. A prefix/suffix split is learned only from a plain token event (one choice, no finish reason,
    no usage, no error) and only after a probe proves that the literal there is `choices[0].delta.content`;
    anything else is parsed in full.
    """

    _PROBE = "\x00omost-probe"

    def __init__(self):
        self.prefix: bytes | None = None  # `data: ` + the JSON up to and including the content's opening quote
        self.suffix = b""  # the JSON after the content's closing quote + the blank line

    def content(self, chunk: bytes) -> str | None:
        """The content of `chunk` when it matches the learned template, else None."""
        if (self.prefix is None or len(chunk) <= self._shortest or not chunk.startswith(self.prefix)
                or not chunk.endswith(self.suffix)):
            return None
        body = chunk[self._start:self._stop].decode("utf-8", errors="replace")
        try:
            value, end = _scanstring(body, 0)  # the literal's text after its opening quote
        except ValueError:
            return None
        return value if end == len(body) else None

    def learn(self, chunk: bytes, obj: dict) -> None:
        """Learn from `chunk`, one whole event whose JSON parsed to `obj`."""
        head = single_event_head(chunk)
        choices = obj.get("choices")
        if (head is None or self.content(chunk) is not None or not isinstance(choices, list) or len(choices) != 1
                or not isinstance(choices[0], dict) or choices[0].get("finish_reason") is not None
                or obj.get("usage") or obj.get("error") or not isinstance(choices[0].get("delta"), dict)
                or not isinstance(choices[0]["delta"].get("content"), str)):
            return
        self.prefix = None
        data = chunk[head:-2]
        at = data.find(b'"content"')
        while at >= 0:
            i = at + len(b'"content"')
            while i < len(data) and data[i] in b" \t\r\n:":
                i += 1
            if data[i:i + 1] == b'"':
                end = _literal_end(data, i + 1)
                if end is not None and self._proves(data[:i + 1], data[end:], obj):
                    self.prefix, self.suffix = chunk[:head + i + 1], data[end:] + b"\n\n"
                    self._start, self._stop = len(self.prefix), -len(self.suffix)  # suffix >= 2 bytes
                    self._shortest = len(self.prefix) + len(self.suffix)
                    return
            at = data.find(b'"content"', at + 1)

    def _proves(self, before: bytes, after: bytes, obj: dict) -> bool:
        try:
            probed = json.loads(before + json.dumps(self._PROBE)[1:].encode() + after)
        except ValueError:
            return False
        expected = json.loads(json.dumps(obj))
        expected["choices"][0]["delta"]["content"] = self._PROBE
        return probed == expected


def _literal_end(data: bytes, start: int) -> int | None:
    """The byte index after the closing quote of the JSON string literal whose text begins at `start`."""
    try:
        text = data[start:].decode("utf-8")
        _, end = _scanstring(text, 0)
    except ValueError:  # UnicodeDecodeError is a ValueError
        return None
    return start + len(text[:end].encode("utf-8"))


def _read_stream(response, stop: threading.Event, reading: _Reading) -> Iterator[TextDelta | Finished]:
    if response.headers.get("content-type", "").startswith("application/json"):
        yield from _whole_answer(response, reading)  # a server that ignored "stream"
        return
    decoder, template = SSEDecoder(reading.max_bytes), ChunkTemplate()
    templated = template.content
    redactor = StreamRedactor(reading.secrets)
    mask = redactor.feed if redactor.forms else None
    finish, usage, done = None, None, False
    chunks = response.iter_bytes()
    while not done:
        chunk = next(chunks, None)
        content = templated(chunk) if chunk is not None and decoder.idle else None
        if content:  # a token event like the last ones: no full parse needed
            decoder.line_number += 2
            reading.tokens += 1
            text = mask(content) if mask else content
            if text:
                yield TextDelta(text, reading.tokens)
        else:
            if content is None:
                events = _decoded(decoder, chunk, reading)
            else:  # an empty token event
                events, decoder.line_number = (), decoder.line_number + 2
            for name, data in events:
                if data == "[DONE]":
                    done = True
                    break
                obj = _event_object(name, data, reading, at_end=chunk is None)
                if chunk is not None and len(events) == 1 and not name:
                    template.learn(chunk, obj)
                content, reason, event_usage = _event_parts(obj, data, reading)
                if content:
                    reading.tokens += 1
                    text = mask(content) if mask else content
                    if text:
                        yield TextDelta(text, reading.tokens)
                finish = reason or finish
                usage = event_usage or usage
            if decoder.line_number - 2 * reading.tokens > reading.max_idle_lines:  # two lines per token event
                raise LLMError(f"the server sent more than {reading.max_idle_lines:,} lines without answer text "
                               f"(after {reading.tokens} tokens): it streams without answering")
        if stop.is_set() and not done:
            yield from _held_back(redactor, reading)
            yield Finished("stopped", "", reading.tokens, reading.seconds())
            return
        if chunk is None:
            break
    if not done and finish is None:
        raise (EmptyStream if reading.tokens == 0 else LLMError)(
            _closed_mid_answer(reading.tokens, "the server sent no finish reason and no [DONE]"))
    yield from _held_back(redactor, reading)
    tokens = (usage or {}).get("completion_tokens")
    yield Finished(_FINISH.get(finish, "stop"), "", reading.tokens if tokens is None else tokens, reading.seconds())


def _held_back(redactor: StreamRedactor, reading: _Reading) -> Iterator[TextDelta]:
    """The answer's tail the redactor still holds (it could have begun a secret)."""
    text = redactor.close()
    if text:
        yield TextDelta(text, reading.tokens)


def _decoded(decoder: SSEDecoder, chunk: bytes | None, reading: _Reading) -> list[tuple[str, str]]:
    """The events `chunk` completes (None: the stream ended); a malformed stream is an LLMError."""
    try:
        return decoder.close() if chunk is None else decoder.feed(chunk)
    except SSEError as exc:
        if chunk is None:  # the last line was cut
            raise LLMError(_closed_mid_answer(reading.tokens, "in the middle of an event")) from None
        raise LLMError(f"{exc}: {quoted(exc.line, reading.secrets)}" if exc.line else str(exc)) from None


def _event_object(name: str, data: str, reading: _Reading, at_end: bool) -> dict:
    """An event's JSON object; an error event, or data that is not a JSON object, is an LLMError (data cut
    by the end of the stream: the connection closed mid-answer)."""
    if name == "error":
        raise LLMError(f"the server reported an error during the answer: "
                       f"{server_message(data.encode('utf-8'), reading.secrets)}")
    try:
        obj = _json(data)
    except ValueError:
        if at_end:
            raise LLMError(_closed_mid_answer(reading.tokens, "in the middle of an event")) from None
        raise reading.sent("an event whose data is not JSON", data) from None
    if not isinstance(obj, dict):
        raise reading.sent("an event that is not a JSON object", data)
    if obj.get("error"):
        raise LLMError(f"the server reported an error during the answer: "
                       f"{server_message(data.encode('utf-8'), reading.secrets)}")
    return obj


def _is_count(value) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


def _event_parts(obj: dict, data: str, reading: _Reading, part: str = "delta") -> tuple[str, str | None, dict | None]:
    """(text, finish reason, usage) of a stream event, or with part="message" of a whole answer. Every field
    used is checked: a wrong type is an LLMError quoting the event, never an AttributeError or TypeError."""
    choices = obj.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise reading.sent("an event whose 'choices' is not a list", data)
    texts, finish = [], None
    for choice in choices or ():
        if not isinstance(choice, dict):
            raise reading.sent("a choice that is not a JSON object", data)
        message = choice.get(part)
        if message is not None and not isinstance(message, dict):
            raise reading.sent(f"a choice whose '{part}' is not a JSON object", data)
        content = message.get("content") if message is not None else None
        if content is not None and not isinstance(content, str):
            raise reading.sent(f"a '{part}.content' that is not a string", data)
        reason = choice.get("finish_reason")
        if reason is not None and not isinstance(reason, str):
            raise reading.sent("a 'finish_reason' that is not a string", data)
        if content:
            texts.append(content)
        finish = reason or finish
    usage = obj.get("usage")
    if usage is not None and not (isinstance(usage, dict) and _is_count(usage.get("completion_tokens"))):
        raise reading.sent("a 'usage' that is not an object with a whole completion_tokens", data)
    return "".join(texts), finish, usage


def _whole_answer(response, reading: _Reading) -> Iterator[TextDelta | Finished]:
    """A non-streamed chat completion ({"choices": [{"message": {"content": ...}}]}), read up to the limit."""
    body, complete = _read_at_most(response, reading.max_bytes)
    if not complete:
        raise LLMError(f"the server's answer is longer than {reading.max_bytes:,} bytes; no answer within the "
                       f"answer cap is that long")
    data = body.decode("utf-8", errors="replace")
    obj = _event_object("", data, reading, at_end=False)
    content, finish, usage = _event_parts(obj, data, reading, part="message")
    if not obj.get("choices"):
        raise reading.sent("an answer without choices", data)
    tokens = (usage or {}).get("completion_tokens")
    reading.tokens = tokens if tokens is not None else 1
    text = redact(content, reading.secrets)
    if text:
        yield TextDelta(text, reading.tokens)
    yield Finished(_FINISH.get(finish, "stop"), "", reading.tokens, reading.seconds())
