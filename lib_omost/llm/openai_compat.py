"""OpenAI-compatible backend: POST /v1/chat/completions with server-sent-event (SSE) streaming.

Works with llama.cpp's llama-server, Ollama (/v1), vLLM, LM Studio and TGI's messages API. httpx is imported
lazily. The API key is held in a `Secret`: it is sent in the Authorization header and nowhere else (never in
a repr, a log line or an error message).
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from json.decoder import scanstring as _scanstring  # the C string scanner json.loads uses
from typing import Iterator
from urllib.parse import urlsplit

from lib_omost.llm.conversation import estimate_tokens
from lib_omost.llm.events import Finished, GenerationSettings, LLMError, TextDelta

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 120.0
_SHOWN_CHARS = 300  # of a server's error body or a malformed line


class Secret:
    """A string that never shows itself: repr/str print '***'; `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if not isinstance(value, str):
            raise TypeError("a secret must be a string")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def api_key_from_env(variable: str) -> Secret:
    value = os.environ.get(variable, "")
    if not value.strip():
        raise ValueError(f"the environment variable {variable!r} holding the API key is not set or empty")
    return Secret(value.strip())


def api_root(base_url: str) -> str:
    """The '.../v1' root for a base URL given as 'http://host:port', '.../v1' or '.../v1/chat/completions'."""
    url = (base_url or "").strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the server URL must look like http://host:port or https://host/v1, got {base_url!r}")
    for suffix in ("/chat/completions", "/models"):
        if url.endswith("/v1" + suffix):
            url = url[: -len(suffix)]
    return url if url.endswith("/v1") else url + "/v1"


@dataclass(frozen=True)
class EndpointConfig:
    """An OpenAI-compatible server. model None = the first model the server lists at /v1/models.
    context_length None = read it from /v1/models where the server says (vLLM, llama.cpp), else unknown."""

    base_url: str
    model: str | None = None
    api_key: Secret | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    context_length: int | None = None

    def __post_init__(self):
        api_root(self.base_url)  # validates
        if isinstance(self.api_key, str):
            object.__setattr__(self, "api_key", Secret(self.api_key) if self.api_key.strip() else None)
        elif self.api_key is not None and not isinstance(self.api_key, Secret):
            raise TypeError("api_key must be a string, a Secret or None")
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if self.model is not None and not self.model.strip():
            object.__setattr__(self, "model", None)
        if self.context_length is not None and (not isinstance(self.context_length, int)
                                                or self.context_length < 1):
            raise ValueError(f"context_length must be None or an integer >= 1, got {self.context_length!r}")

    @property
    def root(self) -> str:
        return api_root(self.base_url)


# ---- SSE ----------------------------------------------------------------------------------------------

class SSEError(ValueError):
    pass


class EmptyStream(LLMError):
    """The server ended the stream without a token, a finish reason or [DONE]."""


@dataclass
class SSEDecoder:
    """Bytes → events (event name, data), per the SSE format: `field: value` lines, a blank line ends an
    event, `data` lines are joined with newlines, lines starting with ':' are comments. Any other line is
    malformed (an OpenAI stream never has one)."""

    _rest: bytes = b""
    _data: list[str] = field(default_factory=list)
    _event: str = ""
    line_number: int = 0
    idle: bool = True  # between events: no partial line, data or event name pending

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        head = single_event_head(chunk) if self.idle else None
        if head is not None:  # fast path: the chunk is exactly one `data:` event (a server's token)
            self.line_number += 2
            return [("", chunk[head:-2].decode("utf-8", errors="replace"))]
        lines = (self._rest + chunk).split(b"\n")
        self._rest = lines.pop()
        events = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        self.idle = not (self._rest or self._data or self._event)
        return events

    def close(self) -> list[tuple[str, str]]:
        """Events still pending when the stream ends (a last line without its newline, an event without
        its blank line)."""
        events = []
        for line in (self._rest, b"") if self._rest else (b"",):
            event = self._line(line)
            if event is not None:
                events.append(event)
        self._rest = b""
        self.idle = not (self._data or self._event)
        return events

    def _line(self, raw: bytes) -> tuple[str, str] | None:
        self.line_number += 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            if not self._data:
                self._event = ""
                return None
            event = (self._event, "\n".join(self._data))
            self._data, self._event = [], ""
            return event
        name, colon, value = raw.partition(b":")
        if not colon:
            raise SSEError(f"malformed server-sent event at line {self.line_number}: {_shown(raw)}")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", errors="replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", errors="replace")
        elif name not in (b"", b"id", b"retry"):  # b"" = a comment line
            raise SSEError(f"malformed server-sent event at line {self.line_number}: {_shown(raw)}")
        return None


def single_event_head(chunk: bytes) -> int | None:
    """For a chunk that is exactly one `data:` line and its blank line, the length of `data:` / `data: `
    (where the value starts); else None."""
    if chunk.startswith(b"data:") and chunk.endswith(b"\n\n") and chunk.find(b"\n") == len(chunk) - 2:
        return 6 if chunk[5:6] == b" " else 5
    return None


def _shown(raw: bytes | str) -> str:
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    return repr(text[:_SHOWN_CHARS] + ("..." if len(text) > _SHOWN_CHARS else ""))


# ---- error messages -------------------------------------------------------------------------------

def server_message(body: bytes) -> str:
    """The human part of an error body: OpenAI's {"error": {"message"}}, {"error": "..."}, {"message"},
    {"detail"}, or the text itself."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        error = obj.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for value in (error, obj.get("message"), obj.get("detail")):
            if isinstance(value, str) and value:
                return value
    if not text:
        return "(empty response body)"
    return text[:_SHOWN_CHARS] + ("..." if len(text) > _SHOWN_CHARS else "")


def http_error(status: int, reason: str, message: str) -> str:
    hint = {401: "check the API key", 403: "check the API key and its permissions",
            404: "check the server URL and the model name"}.get(status)
    text = f"the server answered HTTP {status} {reason}: {message}"
    return f"{text} ({hint})" if hint else text


@dataclass
class _StreamState:
    tokens: int = 0


@contextmanager
def _http_errors(config: EndpointConfig, state: _StreamState | None = None):
    """Translate httpx's exceptions into LLMErrors that say what happened and what to try."""
    import httpx

    root = config.root
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
        got = f" after {state.tokens} tokens" if state is not None else ""
        raise LLMError(f"the server closed the connection before the answer was complete{got} "
                       f"({type(exc).__name__}: {exc})") from exc
    except httpx.TimeoutException as exc:
        raise LLMError(f"the request to {root} timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise LLMError(f"the request to {root} failed: {type(exc).__name__}: {exc}") from exc


def _redacted(message: str, key: Secret | None) -> str:
    return message.replace(key.reveal(), "***") if key is not None and key.reveal() else message


# ---- the backend -----------------------------------------------------------------------------------

_FINISH = {"stop": "stop", "eos": "stop", "length": "length"}


class OpenAIBackend:
    """Chat with an OpenAI-compatible server (see events.Backend)."""

    def __init__(self, config: EndpointConfig):
        self.config = config
        self._models: list[dict] | None = None
        self._http = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"{self.config.model or 'the first model'} at {self.config.root}"

    def client(self):
        """The backend's httpx client, made once: connections are kept, and so is its TLS setup (loading the
        CA certificates takes tens of milliseconds; plain http:// servers skip it)."""
        with self._lock:
            if self._http is None:
                import httpx

                headers = {"Accept": "application/json"}
                if self.config.api_key is not None:
                    headers["Authorization"] = "Bearer " + self.config.api_key.reveal()
                timeout = httpx.Timeout(connect=self.config.connect_timeout, read=self.config.read_timeout,
                                        write=self.config.read_timeout, pool=self.config.connect_timeout)
                self._http = httpx.Client(timeout=timeout, headers=headers,
                                          verify=self.config.root.startswith("https://"))
            return self._http

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def _fail(self, response) -> LLMError:
        message = _redacted(server_message(response.read()), self.config.api_key)
        return LLMError(http_error(response.status_code, response.reason_phrase, message))

    def models(self) -> list[dict]:
        """The server's /v1/models list (fetched once per backend)."""
        if self._models is None:
            with _http_errors(self.config):
                response = self.client().get(self.config.root + "/models")
                if response.status_code >= 400:
                    raise self._fail(response)
                try:
                    data = response.json()["data"]
                    models = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
                except (ValueError, KeyError, TypeError) as exc:
                    raise LLMError(f"the server's {self.config.root}/models answer is not an OpenAI model list "
                                   f"({_shown(response.content)}); give the model name") from exc
            self._models = models
        return self._models

    def model_name(self) -> str:
        if self.config.model is not None:
            return self.config.model
        models = self.models()
        if not models:
            raise LLMError(f"the server at {self.config.root} lists no models; give the model name")
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
        for entry in entries:
            meta = entry.get("meta") or {}  # llama.cpp: n_ctx = what one request gets (-c / slots); 0 = unloaded
            size = entry.get("max_model_len") or meta.get("n_ctx") or meta.get("n_ctx_train")
            if isinstance(size, int) and size > 0:
                return size
        return None

    def request_body(self, messages: list[dict], settings: GenerationSettings) -> dict:
        body = {"model": self.model_name(), "messages": messages, "stream": True,
                "temperature": float(settings.temperature), "top_p": float(settings.top_p),
                "max_tokens": settings.max_new_tokens}
        if settings.seed is not None:
            body["seed"] = settings.seed
        return body

    def stream(self, messages: list[dict], settings: GenerationSettings,
               stop: threading.Event) -> Iterator[TextDelta | Finished]:
        body = self.request_body(messages, settings)
        state = _StreamState()
        start = time.perf_counter()
        with _http_errors(self.config, state):
            while True:
                with self.client().stream("POST", self.config.root + "/chat/completions", json=body,
                                   headers={"Accept": "text/event-stream"}) as response:
                    if response.status_code >= 400:
                        error = self._fail(response)
                        # a server that rejects the optional seed: ask again without it
                        if response.status_code in (400, 422) and "seed" in body and "seed" in str(error):
                            del body["seed"]
                            continue
                        raise error
                    try:
                        yield from _read_stream(response, stop, state, start, self.config.api_key)
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
        with httpx.Client(timeout=shared.timeout, headers=shared.headers,
                          verify=self.config.root.startswith("https://")) as fresh:
            response = fresh.post(self.config.root + "/chat/completions",
                                  json={**body, "stream": False, "max_tokens": 1})
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


def _read_stream(response, stop: threading.Event, state: _StreamState, start: float,
                 key: Secret | None) -> Iterator[TextDelta | Finished]:
    if response.headers.get("content-type", "").startswith("application/json"):
        yield from _whole_answer(response.read(), state, start, key)  # a server that ignored "stream"
        return
    decoder, template = SSEDecoder(), ChunkTemplate()
    templated = template.content
    finish, usage, done = None, None, False
    chunks = response.iter_bytes()
    while not done:
        chunk = next(chunks, None)
        content = templated(chunk) if chunk is not None and decoder.idle else None
        if content is not None:  # a token event like the last ones: no full parse needed
            decoder.line_number += 2
            if content:
                state.tokens += 1
                yield TextDelta(content, state.tokens)
        else:
            try:
                events = decoder.close() if chunk is None else decoder.feed(chunk)
            except SSEError as exc:
                raise LLMError(str(exc)) from exc
            for name, data in events:
                if data == "[DONE]":
                    done = True
                    break
                obj = _event_json(name, data, key)
                if chunk is not None and len(events) == 1 and not name:
                    template.learn(chunk, obj)
                for choice in obj.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        state.tokens += 1
                        yield TextDelta(content, state.tokens)
                    finish = choice.get("finish_reason") or finish
                usage = obj.get("usage") or usage
        if stop.is_set() and not done:
            yield Finished("stopped", "", state.tokens, time.perf_counter() - start)
            return
        if chunk is None:
            break
    if not done and finish is None:
        raise (EmptyStream if state.tokens == 0 else LLMError)(
            f"the server ended the stream before the answer was complete (after {state.tokens} "
            f"tokens, no finish reason and no [DONE])")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    tokens = tokens if isinstance(tokens, int) and tokens >= 0 else state.tokens
    yield Finished(_FINISH.get(finish, "stop"), "", tokens, time.perf_counter() - start)


def _event_json(name: str, data: str, key: Secret | None) -> dict:
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise LLMError(f"malformed server-sent event: the data is not JSON: {_shown(data)}") from exc
    if not isinstance(obj, dict):
        raise LLMError(f"malformed server-sent event: expected a JSON object, got {_shown(data)}")
    error = obj.get("error")
    if name == "error" or error:
        message = server_message(json.dumps(obj).encode()) if error else data
        raise LLMError(f"the server reported an error during the answer: {_redacted(message, key)}")
    return obj


def _whole_answer(body: bytes, state: _StreamState, start: float,
                  key: Secret | None) -> Iterator[TextDelta | Finished]:
    obj = _event_json("", body.decode("utf-8", errors="replace"), key)
    try:
        choice = obj["choices"][0]
        content = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError) as exc:
        raise LLMError(f"the server's answer has no choices[0].message.content: {_shown(body)}") from exc
    usage = obj.get("usage") or {}
    state.tokens = usage.get("completion_tokens") or 1
    if content:
        yield TextDelta(content, state.tokens)
    yield Finished(_FINISH.get(choice.get("finish_reason"), "stop"), "", state.tokens,
                   time.perf_counter() - start)
