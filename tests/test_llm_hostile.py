"""Hostile and broken OpenAI-compatible servers (issue 15, classes 1 and 2), over real HTTP on 127.0.0.1:
secrets never leave the client, terminal output carries no control characters, every event shape is checked,
nothing grows without bound, Stop stops at once and keeps the partial answer, and every message says what
happened."""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from lib_omost.canvas import example_canvas
from lib_omost.canvas.cli import format_region_table, main as layout_main
from lib_omost.canvas.parser import MAX_ANSWER_CHARS
from lib_omost.forge import omost_chat
from lib_omost.llm.chat import ask
from lib_omost.llm.cli import main as chat_main
from lib_omost.llm.conversation import Conversation, canvas_answer
from lib_omost.llm.events import (DEFAULT_MAX_ANSWER_CHARS, Failed, Finished, GenerationSettings, LLMError,
                                  TextDelta)
from lib_omost.llm.openai_compat import (EndpointConfig, OpenAIBackend, SSEDecoder, SSEError, _read_stream,
                                         _Reading, max_event_bytes)
from lib_omost.llm.redaction import (StreamRedactor, redact, secret_forms, shown_url, split_credentials,
                                     url_secrets)
from lib_omost.terminal import printable
from tests.test_llm_openai import KEY, Server, chunk, collect, good_stream

PASSWORD = "pw-Zq8/x+y=7"  # URL credentials: percent-encoded in the URL, base64 in the Basic header
USER = "omost"


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def url_with_credentials(server) -> str:
    from urllib.parse import quote
    return server.url.replace("http://", f"http://{USER}:{quote(PASSWORD, safe='')}@")


CREDENTIALS = {  # kind -> (endpoint for the server, api key, what must never be shown)
    "api key": (lambda s: s.url, KEY, (KEY,)),
    "url credentials": (url_with_credentials, None,
                        (PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())),
}


def assert_hidden(text: str, secrets) -> None:
    for secret in secrets:
        for form in secret_forms(secret):
            assert form not in text, (form, text)


def echo(handler) -> str:
    """What a hostile server can echo: the Authorization header, and the decoded Basic credentials."""
    auth = handler.headers.get("Authorization", "")
    if auth.startswith("Basic "):
        auth += " " + base64.b64decode(auth[6:]).decode()
    return auth


def _sse_json(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _redirect(h, echoed):
    from urllib.parse import quote
    h.send_response(307)
    h.send_header("Location", "http://elsewhere.invalid/v1/chat/completions?auth=" + quote(echoed))
    h.send_header("Content-Length", "0")
    h.end_headers()


def _reason_phrase(h, echoed):
    h.send_response(500, "Broken " + echoed)
    h.send_header("Content-Length", "0")
    h.end_headers()


# Every place a server answer reaches a message, each echoing the credentials it was sent.
ECHOES = {
    "malformed line": lambda h, e: h.sse([chunk("ok"), f"<html>{e}</html>\n\n".encode()]),
    "not JSON": lambda h, e: h.sse([f"data: {{oops {e}\n\n".encode()]),
    "JSON array": lambda h, e: h.sse([_sse_json([e])]),
    "choices a string": lambda h, e: h.sse([_sse_json({"choices": e})]),
    "delta a string": lambda h, e: h.sse([_sse_json({"choices": [{"delta": e}]})]),
    "content an object": lambda h, e: h.sse([_sse_json({"choices": [{"delta": {"content": {"k": e}}}]})]),
    "usage a string": lambda h, e: h.sse([chunk("ok"), _sse_json({"choices": [], "usage": e})]),
    "error event": lambda h, e: h.sse([chunk("ok"), b"event: error\ndata: " + e.encode() + b"\n\n"]),
    "error object": lambda h, e: h.sse([_sse_json({"error": {"message": "rejected " + e}})]),
    "HTTP 401 JSON": lambda h, e: h.json_reply(401, {"error": {"message": f"key {e} is not valid"}}),
    "HTTP 500 text, key across the cut": lambda h, e: h.json_reply(500, ("x" * 290 + e).encode(), "text/plain"),
    "HTTP reason phrase": _reason_phrase,
    "answer without choices": lambda h, e: h.json_reply(200, {"answer": e}),
    "redirect": _redirect,
}
MODEL_ECHOES = {
    "models list not a list": lambda h, e: h.json_reply(200, {"data": e}),
    "models HTTP 500": lambda h, e: h.json_reply(500, {"detail": e}),
    "models not JSON": lambda h, e: h.json_reply(200, ("<html>" + e).encode(), "text/html"),
}


def _script(server, case):
    if case in MODEL_ECHOES:
        server.models_script = lambda h: MODEL_ECHOES[case](h, echo(h))
    else:
        server.script = lambda h, body: ECHOES[case](h, echo(h))


@pytest.mark.parametrize("kind", list(CREDENTIALS))
@pytest.mark.parametrize("case", list(ECHOES) + list(MODEL_ECHOES))
def test_credentials_echoed_by_the_server_never_reach_a_message(server, case, kind, monkeypatch, capsys):
    endpoint, key, secrets = CREDENTIALS[kind]
    url = endpoint(server)
    _script(server, case)

    with pytest.raises(LLMError) as info:  # the backend's exception, and everything chained to it
        collect(OpenAIBackend(EndpointConfig(url, api_key=key, read_timeout=10)))
    error = info.value
    assert error.__cause__ is None and error.__suppress_context__
    assert_hidden(str(error) + repr(error.args), secrets)
    assert str(error).startswith(("the server", "the connection")), str(error)

    events = list(ask(OpenAIBackend(EndpointConfig(url, api_key=key)), Conversation("S"), "a cat"))
    assert isinstance(events[-1], Failed)
    assert_hidden(events[-1].message, secrets)

    argv = ["a cat", "--endpoint", url]
    if key:
        monkeypatch.setenv("OMOST_HOSTILE_KEY", key)
        argv += ["--api-key-env", "OMOST_HOSTILE_KEY"]
    assert chat_main(argv) == 1
    out = capsys.readouterr()
    assert out.err.startswith("error: the ") and "Traceback" not in out.err
    assert_hidden(out.out + out.err, secrets)

    llm = omost_chat.LLMChoice(endpoint=url, api_key=key or "")
    states = list(omost_chat.stream_answer(omost_chat.new_session(), llm, "a cat", "{}"))
    assert states[-1][2].startswith("the LLM failed: the ")
    assert_hidden(repr(states), secrets)
    assert_hidden(repr(llm) + repr(EndpointConfig(url, api_key=key)) + OpenAIBackend(EndpointConfig(url)).describe(),
                  secrets)


@pytest.mark.parametrize("kind", list(CREDENTIALS))
def test_credentials_echoed_into_the_answer_are_masked_even_split_over_tokens(server, kind, capsys, monkeypatch):
    endpoint, key, secrets = CREDENTIALS[kind]
    url = endpoint(server)
    answer = canvas_answer(example_canvas())

    def script(h, body):
        text = f"# {echo(h)}\n{answer}"
        h.sse(good_stream([text[i:i + 3] for i in range(0, len(text), 3)]))  # every secret cut into pieces
    server.script = script
    conversation = Conversation("S")
    events = list(ask(OpenAIBackend(EndpointConfig(url, api_key=key)), conversation, "a cat"))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.result.canvas == example_canvas()
    streamed = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert streamed == finished.text == conversation.last_answer and "***" in streamed
    assert_hidden(streamed, secrets)

    argv = ["a cat", "--endpoint", url]
    if key:
        monkeypatch.setenv("OMOST_HOSTILE_KEY", key)
        argv += ["--api-key-env", "OMOST_HOSTILE_KEY"]
    assert chat_main(argv) == 0
    out = capsys.readouterr()
    assert_hidden(out.out + out.err, secrets)


@pytest.mark.parametrize("kind", list(CREDENTIALS))
def test_credentials_never_reach_a_log_line(server, kind, caplog):
    import logging
    endpoint, key, secrets = CREDENTIALS[kind]
    caplog.set_level(logging.DEBUG)
    assert collect(OpenAIBackend(EndpointConfig(endpoint(server), api_key=key)))[0]  # models, then the answer
    auth = server.chats[0]["headers"]["Authorization"]
    assert auth == ("Bearer " + KEY if key else "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    assert "HTTP Request: POST http://127.0.0.1:" in caplog.text  # httpx logs each request's URL: without them
    assert_hidden(caplog.text, secrets)


def test_bad_endpoint_settings_never_show_credentials(capsys):
    for url in ("ftp://omost:hunter2hunter2@h/v1", "omost:hunter2hunter2@h:80", "http://omost:hunter2hunter2@[::1/v1"):
        with pytest.raises(ValueError) as info:
            EndpointConfig(url)
        assert "hunter2hunter2" not in str(info.value) and "***@" in str(info.value)
        assert chat_main(["x", "--endpoint", url]) == 2
        assert "hunter2hunter2" not in capsys.readouterr().err
    for key in ("has space", "tab\there", "caf\u00e9-key", "line\nbreak"):
        with pytest.raises(ValueError, match="printable ASCII") as info:
            EndpointConfig("http://h:1", api_key=key)
        assert key.strip() not in str(info.value)


# ---- the one redaction function -----------------------------------------------------------------

# any secret a header can carry and more ('*', the mask itself, excluded: a key ending in '***' could be rebuilt
# from the mask and the text before it)
secrets_text = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_categories=("Cs",),
                                              blacklist_characters="*"), min_size=6, max_size=40)
plain_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=6,
                     max_size=40)  # what real API keys are made of: every form of one is the key itself


@hsettings(max_examples=200, deadline=None)
@given(secrets_text, st.text(max_size=60), st.text(max_size=60))
def test_redact_masks_every_form_of_a_secret(secret, before, after):
    forms = secret_forms(secret)
    assert {secret, json.dumps(secret)[1:-1], repr(secret)[1:-1]} <= forms
    for form in forms:
        assert_hidden(redact(before + form + after, [secret]), [secret])


def _fed(redactor, text, cuts):
    out, at = [], 0
    for cut in sorted(set(cuts)):
        out.append(redactor.feed(text[at:cut]))
        at = max(at, cut)
    return "".join(out) + redactor.feed(text[at:]) + redactor.close()


@hsettings(max_examples=200, deadline=None)
@given(secrets_text, st.text(max_size=80), st.lists(st.integers(1, 200), max_size=20))
def test_stream_redactor_masks_a_secret_split_anywhere(secret, text, cuts):
    full = text[:len(text) // 2] + secret + text[len(text) // 2:] + json.dumps(secret)
    assert_hidden(_fed(StreamRedactor([secret]), full, cuts), [secret])


@hsettings(max_examples=200, deadline=None)
@given(plain_keys, st.text(alphabet="ab-_0 \n", max_size=80), st.lists(st.integers(1, 200), max_size=20))
def test_stream_redactor_equals_redacting_the_whole_text(secret, text, cuts):
    full = text[:len(text) // 3] + secret + text[len(text) // 3:] + secret[:-1]  # and a prefix left at the end
    assert _fed(StreamRedactor([secret]), full, cuts) == redact(full, [secret])


def test_stream_redactor_without_secrets_passes_text_through():
    redactor = StreamRedactor([])
    assert redactor.feed("abc") == "abc" and redactor.close() == ""


def test_split_credentials():
    assert split_credentials("http://u:p%40ss@h:1/v1") == ("http://h:1/v1", ("u", "p@ss"))
    assert split_credentials("https://token@h/v1") == ("https://h/v1", ("token", ""))
    assert split_credentials("http://h:1/v1") == ("http://h:1/v1", None)


@pytest.mark.parametrize("url, shown, secrets", [
    ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1", ()),
    ("http://u:p%40ss@h:1/v1", "http://***@h:1/v1",
     ("u:p%40ss", "p%40ss", "p@ss", base64.b64encode(b"u:p@ss").decode())),
    ("https://token@h/v1", "https://***@h/v1", ("token", "token", "token", base64.b64encode(b"token:").decode())),
    ("u:pw@h:1", "***@h:1", ("u:pw", "pw", "pw", base64.b64encode(b"u:pw").decode())),
])
def test_url_credentials(url, shown, secrets):
    assert shown_url(url) == shown and url_secrets(url) == secrets


# ---- terminal output ----------------------------------------------------------------------------

UNSAFE = [chr(c) for c in [*range(0, 9), *range(11, 32), *range(0x7F, 0xA0), *range(0x202A, 0x202F),
                            *range(0x2066, 0x206A), 0xD800, 0xDBFF, 0xDC00, 0xDFFF]]


def unsafe(c: str) -> bool:
    return c in UNSAFE or 0xD800 <= ord(c) <= 0xDFFF


@hsettings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(UNSAFE) | st.characters(), max_size=80))
def test_printable_escapes_unsafe_characters_and_keeps_layout(text):
    shown = printable(text)
    assert not any(map(unsafe, shown))
    assert shown.count("\n") == text.count("\n") and shown.count("\t") == text.count("\t")
    assert "\n" not in printable(text, one_line=True) and "\t" not in printable(text, one_line=True)
    if not any(map(unsafe, text)):
        assert shown == text
    shown.encode("utf-8")  # no lone surrogate left


def test_printable_escapes_are_visible():
    assert printable("\x1b]0;pwned\x07a\x9b2J\u202eb\ud800\n\t") == "\\x1b]0;pwned\\x07a\\x9b2J\\u202eb\\ud800\n\t"


HOSTILE_TEXT = "A cat.\x1b]0;pwned\x07\x1b[2J\x9b31m\u202etxt.exe\r"


def test_layout_table_and_cli_escape_control_characters(tmp_path, capsys):
    from lib_omost.canvas import canvas_to_json
    canvas = example_canvas()
    canvas.global_region.description = HOSTILE_TEXT
    canvas.regions[0].description = HOSTILE_TEXT
    table = format_region_table(canvas)
    assert not any(c in table for c in UNSAFE) and "\\x1b]0;pwned\\x07" in table
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(canvas_to_json(canvas)), encoding="utf-8")
    assert layout_main([str(path)]) == 0
    out = capsys.readouterr()
    assert not any(c in out.out + out.err for c in UNSAFE) and "\\x1b[2J" in out.out


def test_chat_cli_escapes_the_streamed_answer_and_messages(server, capsys):
    answer = canvas_answer(example_canvas()).replace("A golden retriever", "A dog\x1b[2J\x1b]0;x\x07")
    server.script = lambda h, body: h.sse(good_stream(["Here\x1b[31m it is\x07\n", answer]))
    assert chat_main(["a cat", "--endpoint", server.url]) == 0
    out = capsys.readouterr()
    assert not any(c in out.out + out.err for c in UNSAFE)
    assert "Here\\x1b[31m it is\\x07\n" in out.out and "A dog\\x1b[2J" in out.out  # streamed and in the table
    server.script = lambda h, body: h.sse([_sse_json({"choices": [{"delta": {"content": 5}}], "x": "\x1b[2J"})])
    assert chat_main(["a cat", "--endpoint", server.url]) == 1
    assert "\x1b" not in capsys.readouterr().err


# ---- every event shape checked ------------------------------------------------------------------

BAD_EVENTS = {
    "choices a string": {"choices": "abc"},
    "choices a list of strings": {"choices": ["abc", "def"]},
    "choices holding null": {"choices": [None]},
    "delta a string": {"choices": [{"delta": "abc"}]},
    "delta a list": {"choices": [{"delta": ["abc"]}]},
    "content a number": {"choices": [{"delta": {"content": 5}}]},
    "content a list": {"choices": [{"delta": {"content": ["a"]}}]},
    "content true": {"choices": [{"delta": {"content": True}}]},
    "finish reason a number": {"choices": [{"delta": {}, "finish_reason": 1}]},
    "usage a string": {"choices": [], "usage": "abc"},
    "usage tokens a string": {"choices": [], "usage": {"completion_tokens": "12"}},
    "usage tokens negative": {"choices": [], "usage": {"completion_tokens": -1}},
    "a JSON array": [1, 2],
    "a JSON string": "abc",
    "JSON null": None,
    "a number": 5,
    "nested too deeply": "[" * 100_000,
}


def _event_bytes(obj) -> bytes:
    return b"data: " + (obj.encode() if isinstance(obj, str) and obj.startswith("[[") else json.dumps(obj).encode())


class _Response:
    def __init__(self, chunks, content_type="text/event-stream"):
        self.chunks, self.headers = chunks, {"content-type": content_type}

    def iter_bytes(self):
        return iter(self.chunks)


def _read(chunks, content_type="text/event-stream", **reading):
    return list(_read_stream(_Response(chunks, content_type), threading.Event(), _Reading(**reading)))


@pytest.mark.parametrize("case", list(BAD_EVENTS))
def test_wrong_typed_events_are_clear_messages(case):
    event = _event_bytes(BAD_EVENTS[case]) + b"\n\n"
    for chunks in ([chunk("ok"), event, b"data: [DONE]\n\n"], [chunk("ok") + event]):  # alone, or after a token
        with pytest.raises(LLMError, match=r"^the server sent (a|an) ") as info:
            _read(chunks)
        assert len(str(info.value)) < 500
    whole = BAD_EVENTS[case]
    if isinstance(whole, dict) and "choices" in whole:  # the same shapes in a non-streamed answer
        whole = json.loads(json.dumps(whole).replace('"delta"', '"message"'))
    with pytest.raises(LLMError, match=r"^the server sent (a|an) "):
        _read([_event_bytes(whole)[6:]], "application/json")


@pytest.mark.parametrize("case", ["choices a string", "content a number", "a JSON array"])
def test_wrong_typed_events_fail_the_chat_and_the_webui_cleanly(server, case):
    server.script = lambda h, body: h.sse([chunk("ok"), _event_bytes(BAD_EVENTS[case]) + b"\n\n"])
    events = list(ask(OpenAIBackend(EndpointConfig(server.url)), Conversation("S"), "a cat"))
    assert isinstance(events[-1], Failed) and events[-1].message.startswith("the server sent")
    states = list(omost_chat.stream_answer(omost_chat.new_session(), omost_chat.LLMChoice(endpoint=server.url),
                                           "a cat", "{}"))
    assert states[-1][2].startswith("the LLM failed: the server sent") and states[-1][0] == []


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["choices", "delta", "content", "finish_reason", "usage", "message",
                                                "completion_tokens", "index", "x"]), inner, max_size=4),
                           max_leaves=12)


@hsettings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_event_is_read_or_refused_with_a_message(value):
    for chunks, content_type in (([b"data: " + json.dumps(value).encode() + b"\n\n", b"data: [DONE]\n\n"],
                                  "text/event-stream"), ([json.dumps(value).encode()], "application/json")):
        try:
            events = _read(chunks, content_type)
        except LLMError as exc:
            assert str(exc).startswith(("the server sent", "the server reported an error")), str(exc)
        else:
            assert isinstance(events[-1], Finished)
            assert all(isinstance(e, TextDelta) and isinstance(e.text, str) for e in events[:-1])


@pytest.mark.parametrize("models, context", [
    ({"data": [{"id": "m", "meta": "abc"}]}, None),
    ({"data": [{"id": "m", "max_model_len": "8192"}]}, None),
    ({"data": [{"id": "m", "max_model_len": True}]}, None),
    ({"data": [{"id": "m", "meta": {"n_ctx_train": 4096}}]}, 4096),
    ({"data": [{"id": 5}, "x", {"id": "m", "max_model_len": 2048}]}, 2048),
])
def test_model_list_fields_are_checked(server, models, context):
    server.models = models
    assert OpenAIBackend(EndpointConfig(server.url)).context_length() == context


@pytest.mark.parametrize("models, message", [
    ({"data": [{"id": 5}]}, "lists no models; give the model name"),
    ({"data": {"id": "m"}}, "is not an OpenAI model list"),
    (b"[" * 100_000, "is not an OpenAI model list"),
])
def test_bad_model_lists(server, models, message):
    server.models_script = lambda h: h.json_reply(200, models)
    with pytest.raises(LLMError, match=message):
        OpenAIBackend(EndpointConfig(server.url)).model_name()


# ---- nothing grows without bound ------------------------------------------------------------------

def test_line_cap_holds_for_any_chunking():
    limit = 1000
    for size in (1, 7, 100, 999, 1000, 5000):
        decoder = SSEDecoder(limit)
        with pytest.raises(SSEError, match="longer than 1,000 bytes"):
            for _ in range(0, 3000, size):
                decoder.feed(b"d" * size)
        decoder = SSEDecoder(limit)
        line = b"data: " + b"x" * (limit - 6)
        events = [e for i in range(0, len(line), size) for e in decoder.feed(line[i:i + size])] + decoder.feed(b"\n\n")
        assert events == [("", "x" * (limit - 6))]


def test_event_data_cap_holds_over_many_data_lines():
    decoder = SSEDecoder(1000)
    with pytest.raises(SSEError, match="an event longer than 1,000 bytes"):
        for _ in range(200):
            decoder.feed(b"data: 0123456789\n")


def test_event_limit_follows_the_answer_cap_and_the_default_cap_is_the_parsers():
    assert DEFAULT_MAX_ANSWER_CHARS == MAX_ANSWER_CHARS == GenerationSettings().max_answer_chars
    assert max_event_bytes(1000) == 12 * 1000 + 64 * 1024
    text = "😀" * 1000  # the worst case: 12 bytes of JSON per character
    event = b"data: " + json.dumps({"choices": [{"delta": {"content": text}}]}).encode()
    assert len(event) < max_event_bytes(1000)
    assert _read([event + b"\n\n", b"data: [DONE]\n\n"], max_bytes=max_event_bytes(1000))[0].text == text


def test_a_huge_line_over_http_is_refused(server):
    server.script = lambda h, body: h.sse([chunk("ok"), b"data: " + b"x" * 65536 * 4])
    with pytest.raises(LLMError, match=r"the server sent a line longer than 77,536 bytes"):
        collect(OpenAIBackend(EndpointConfig(server.url)), max_answer_chars=1000)


def test_a_huge_whole_answer_is_refused(server):
    server.script = lambda h, body: h.json_reply(200, {"choices": [{"message": {"content": "x" * 200_000}}]})
    with pytest.raises(LLMError, match="the server's answer is longer than 77,536 bytes"):
        collect(OpenAIBackend(EndpointConfig(server.url)), max_answer_chars=1000)
    assert collect(OpenAIBackend(EndpointConfig(server.url)), max_answer_chars=200_000)[0] == "x" * 200_000


def test_a_huge_error_body_is_shortened(server):
    server.script = lambda h, body: h.json_reply(500, b"e" * 1_000_000, "text/plain")
    with pytest.raises(LLMError) as info:
        collect(OpenAIBackend(EndpointConfig(server.url)))
    assert str(info.value).endswith("e" * 300 + "...") and len(str(info.value)) < 400


CANVAS_START = ("```python\ncanvas = Canvas()\ncanvas.set_global_description(description='A cat.', "
                "detailed_descriptions=['A cat.'], tags='cat', HTML_web_color_name='white')\n")


def test_a_stream_without_answer_text_ends():
    keep_alive = [chunk("a"), chunk("b")] + [b": ping\n"] * 300 + [chunk(role="assistant")] * 100
    with pytest.raises(LLMError, match=r"the server sent more than 200 lines without answer text \(after 2 tokens\)"):
        _read(keep_alive, max_idle_lines=200)
    text = "".join(e.text for e in _read([chunk("a")] * 1000 + [chunk(finish="stop"), b"data: [DONE]\n\n"],
                                         max_idle_lines=10)[:-1])
    assert text == "a" * 1000  # token events do not count


def forever(h, body):
    """A server that ignores max_tokens and streams until the client leaves."""
    h.sse(itertools.chain([chunk(CANVAS_START)], itertools.repeat(chunk("# more text\n"))))


def wait_for(condition, seconds=30.0) -> bool:
    """Poll `condition` until it holds (True) or `seconds` pass (False): a generous bound, not a speed test."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_answer_cap_ends_an_endless_answer_and_keeps_it(server):
    server.script = forever
    conversation = Conversation("S")
    events = list(ask(OpenAIBackend(EndpointConfig(server.url)), conversation, "a cat",
                      GenerationSettings(max_answer_chars=5000)))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "answer_cap"
    assert len(finished.text) == 5000 and finished.text.startswith(CANVAS_START)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == finished.text
    assert conversation.last_answer == finished.text and finished.result.canvas.global_region.description == "A cat."
    assert wait_for(lambda: server.client_left == 1)  # the client closed the connection: the server never ended


def test_answer_cap_in_the_cli_and_the_webui(server, capsys):
    server.script = forever
    assert chat_main(["a cat", "--endpoint", server.url, "--max-answer-chars", "3000", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "finished (answer_cap)" in err and "answer cap of 3,000 characters" in err
    llm = omost_chat.LLMChoice(endpoint=server.url, max_answer_chars=3000)
    session = omost_chat.new_session()
    *_, (pairs, _, status) = omost_chat.stream_answer(session, llm, "a cat", "{}")
    assert "answer cap of 3,000 characters" in status and len(pairs[-1][1]) == 3000


class EndlessBackend:
    """A backend that never finishes; records when its stream ended (told to stop, or closed)."""

    def __init__(self):
        self.ended = threading.Event()

    def describe(self):
        return "endless"

    def count_tokens(self, messages):
        return 1, True

    def context_length(self):
        return None

    def stream(self, messages, settings, stop):
        try:
            for n in itertools.count(1):
                if stop.is_set():
                    yield Finished("stopped", "", n, 0.0)
                    return
                yield TextDelta("0123456789", n)
        finally:
            self.ended.set()


def test_answer_cap_halts_any_backend():
    backend = EndlessBackend()
    finished = list(ask(backend, Conversation("S"), "x", GenerationSettings(max_answer_chars=12345)))[-1]
    assert finished.reason == "answer_cap" and finished.text == "0123456789" * 1234 + "01234"
    assert backend.ended.wait(30)


def test_webui_updates_are_spaced_by_the_answer_length(monkeypatch):
    """The Chatbot takes the whole text on each update: the total text sent must grow linearly with the answer
    (here 200,000 characters in 20,000 pieces, a clock advancing 1 ms per piece), not quadratically."""
    pieces, size = 20_000, 10

    class Fast(EndlessBackend):
        def stream(self, messages, settings, stop):
            for n in range(1, pieces + 1):
                yield TextDelta("x" * size, n)
            yield Finished("stop", "", pieces, 1.0)

    monkeypatch.setattr(omost_chat.LLMChoice, "make_backend", lambda self: Fast())
    ticks = itertools.count(0.0, 0.001)
    states = list(omost_chat.stream_answer(omost_chat.new_session(), omost_chat.LLMChoice(endpoint="http://h:1"),
                                           "a cat", "{}", clock=lambda: next(ticks)))
    sent = sum(len(pairs[-1][1]) for pairs, _, _ in states if pairs)
    answer = pieces * size
    assert states[-1][0][-1][1] == "x" * answer
    assert sent <= 30 * answer  # one update per piece would send pieces * answer / 2 = 2e9 characters
    assert len(states) < pieces / 10


@pytest.mark.parametrize("shown, interval", [(0, 0.1), (20_000, 0.1), (200_000, 1.0), (1_000_000, 5.0)])
def test_update_interval(shown, interval):
    assert omost_chat.update_interval(shown) == pytest.approx(interval)


# ---- Stop stops now ---------------------------------------------------------------------------------

def silent_after(server, pieces) -> threading.Event:
    """The server sends these pieces, then nothing until the test ends (the clients' read timeout is 60 s);
    the event is set when its silence starts."""
    silence = threading.Event()

    def script(h, body):
        h.sse([chunk(p) for p in pieces], end=False)
        silence.set()
        server.release.wait(60)
    server.script = script
    return silence


def _run_in_thread(fn):
    out, done = {}, threading.Event()

    def run():
        out["value"] = fn()
        done.set()
    threading.Thread(target=run, daemon=True).start()
    return out, done


def test_stop_with_a_silent_server_returns_now_and_keeps_the_partial_answer(server):
    silence = silent_after(server, ["```python\ncanvas = Canvas()\n"])
    stop, conversation = threading.Event(), Conversation("S")
    backend = OpenAIBackend(EndpointConfig(server.url, model="m", read_timeout=60))
    seen = threading.Event()

    def consume():
        events = []
        for event in ask(backend, conversation, "a cat", stop=stop):
            events.append(event)
            if isinstance(event, TextDelta):
                seen.set()
        return events
    out, done = _run_in_thread(consume)
    assert seen.wait(30) and silence.wait(30)
    stop.set()
    assert done.wait(30)  # the server stays silent until the test ends, the read timeout is 60 s
    finished = out["value"][-1]
    assert isinstance(finished, Finished) and finished.reason == "stopped"
    assert finished.text == "```python\ncanvas = Canvas()\n" == conversation.last_answer
    assert finished.result is not None and finished.result.truncated


@pytest.mark.parametrize("where", ["chat", "models"])
def test_stop_while_waiting_for_the_first_byte_or_the_model_list(server, where):
    started = threading.Event()

    def hang(h, *_):
        started.set()
        server.release.wait(60)
    if where == "chat":
        server.script = hang
    else:
        server.models_script = hang
    stop = threading.Event()
    backend = OpenAIBackend(EndpointConfig(server.url, read_timeout=60))
    out, done = _run_in_thread(lambda: list(ask(backend, Conversation("S"), "a cat", stop=stop)))
    assert started.wait(30)
    stop.set()
    assert done.wait(30)  # the server stays silent until the test ends, the read timeout is 60 s
    assert out["value"][-1].reason == "stopped" and out["value"][-1].text == ""


def test_webui_stop_with_a_silent_server_keeps_the_partial_answer(server):
    partial = "```python\ncanvas = Canvas()\n"
    silent_after(server, ["```python\n", "canvas = Canvas()\n"])
    session = omost_chat.new_session()
    llm = omost_chat.LLMChoice(endpoint=server.url, model="m", read_timeout=60)
    states = []

    def consume():
        for state in omost_chat.stream_answer(session, llm, "a cat", "{}"):
            states.append(state)
    out, done = _run_in_thread(consume)
    assert wait_for(lambda: any(pairs and pairs[-1][1] == partial for pairs, _, _ in list(states)))
    session.stop.set()
    assert done.wait(30)  # the server stays silent until the test ends, the read timeout is 60 s
    pairs, _, status = states[-1]
    assert status.startswith("stopped") and pairs == [["a cat", "```python\ncanvas = Canvas()\n"]]


# ---- messages say what happened -----------------------------------------------------------------

def test_redirect_is_reported_and_not_followed(server):
    other = Server()
    try:
        def script(h, body):
            h.send_response(307)
            h.send_header("Location", other.url + "/v1/chat/completions")
            h.send_header("Content-Length", "0")
            h.end_headers()
        server.script = script
        with pytest.raises(LLMError, match=r"the server redirected to 'http://127\.0\.0\.1:\d+/v1/chat/completions' "
                                           r"\(HTTP 307 Temporary Redirect\); redirects are not followed"):
            collect(OpenAIBackend(EndpointConfig(server.url, model="m", api_key=KEY)))
        server.models_script = lambda h: script(h, None)
        with pytest.raises(LLMError, match="the server redirected to"):
            OpenAIBackend(EndpointConfig(server.url, api_key=KEY)).models()
        assert other.requests == []  # the key never went to the other address
    finally:
        other.close()


@pytest.mark.parametrize("reason, expected, note", [
    ("content_filter", "content_filter", "content filter ended the answer"),
    ("length", "length", "cut at max new tokens (4096)"),
    ("max_tokens", "length", "cut at max new tokens (4096)"),
    ("stop", "stop", None),
    ("tool_calls", "stop", None),
])
def test_finish_reasons_are_reported_as_such(server, capsys, reason, expected, note):
    answer = canvas_answer(example_canvas())
    server.script = lambda h, body: h.sse([chunk(answer), chunk(finish=reason), b"data: [DONE]\n\n"])
    assert collect(OpenAIBackend(EndpointConfig(server.url)))[1][-1].reason == expected
    assert chat_main(["a cat", "--endpoint", server.url, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"finished ({expected})" in err
    assert (note in err) if note else ("cut at" not in err and "content filter" not in err)
    *_, (_, _, status) = omost_chat.stream_answer(omost_chat.new_session(),
                                                  omost_chat.LLMChoice(endpoint=server.url), "a cat", "{}")
    assert (note in status) if note else status.startswith("done:")


@pytest.mark.parametrize("tail, message", [
    (b'data: {"choices": [{"delta": {"content": "ab', "in the middle of an event"),
    (b"da", "in the middle of an event"),
    (b"", "the server sent no finish reason and no [DONE]"),
])
def test_connection_closed_mid_answer(server, tail, message):
    server.script = lambda h, body: h.sse([chunk("a"), chunk("b"), chunk("c"), tail], chunked=False)
    with pytest.raises(LLMError) as info:
        collect(OpenAIBackend(EndpointConfig(server.url, model="m")))
    assert str(info.value) == f"the connection closed mid-answer after 3 tokens ({message})"


def test_a_last_event_without_its_blank_line_is_accepted(server):
    server.script = lambda h, body: h.sse([chunk("a"), chunk(finish="stop"), b"data: [DONE]"], chunked=False)
    text, events = collect(OpenAIBackend(EndpointConfig(server.url, model="m")))
    assert text == "a" and events[-1].reason == "stop"


# ---- bad values name the field and what it takes ------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"temperature": "warm"}, "temperature must be a number, got 'warm'"),
    ({"temperature": None}, "temperature must be a number, got None"),
    ({"temperature": 9}, r"temperature must be in \[0, 2\] \(0 = greedy\), got 9"),
    ({"temperature": 2.5}, r"temperature must be in \[0, 2\] \(0 = greedy\), got 2.5"),
    ({"top_p": float("nan")}, "top p must be a number, got nan"),
    ({"max_new_tokens": 10.5}, "max new tokens must be a whole number, got 10.5"),
    ({"max_new_tokens": 0}, r"max_new_tokens must be an integer in \[1, 32768\], got 0"),
    ({"seed": "x"}, r"LLM seed \(-1 = random\) must be a whole number, got 'x'"),
    ({"read_timeout": 0}, "read_timeout must be a finite number of seconds > 0, got 0"),
    ({"read_timeout": "slow"}, r"the read timeout \(Settings → Omost, seconds\) must be a number, got 'slow'"),
    ({"max_answer_chars": 0}, r"max_answer_chars \(the answer cap\) must be an integer >= 1"),
    ({"max_answer_chars": 1.5}, r"the answer cap \(Settings → Omost, characters\) must be a whole number"),
])
def test_webui_llm_settings_name_the_field(change, message):
    llm = omost_chat.LLMChoice(endpoint="http://127.0.0.1:9/v1", **change)
    *_, (_, _, status) = omost_chat.stream_answer(omost_chat.new_session(), llm, "a cat", "{}")
    assert status.startswith("LLM settings: ")
    import re
    assert re.search(message, status), status


def test_an_empty_seed_box_means_random():
    assert omost_chat.LLMChoice(seed=None).settings().seed is None
    assert omost_chat.LLMChoice(seed=7.0).settings().seed == 7


def test_generation_settings_name_the_field_for_any_type():
    for value in ("abc", None, [1], True, float("inf")):
        with pytest.raises(ValueError, match="temperature must be in"):
            GenerationSettings(temperature=value)
        with pytest.raises(ValueError, match="top_p must be in"):
            GenerationSettings(top_p=value)


def test_an_unexpected_error_ends_the_webui_chat_with_a_status(monkeypatch):
    class Broken(EndlessBackend):
        def stream(self, messages, settings, stop):
            raise KeyError(f"bug near {KEY}")
            yield

    monkeypatch.setattr(omost_chat.LLMChoice, "make_backend", lambda self: Broken())
    llm = omost_chat.LLMChoice(endpoint="http://h:1", api_key=KEY)
    *_, (pairs, _, status) = omost_chat.stream_answer(omost_chat.new_session(), llm, "a cat", "{}")
    assert status.startswith("the chat failed unexpectedly: KeyError") and KEY not in status and pairs == []


def test_every_sampling_setting_has_one_range_for_the_ui_and_the_validation():
    """The WebUI slider of each LLM sampling setting spans exactly what GenerationSettings accepts, and the
    defaults of GenerationSettings, the WebUI's LLMChoice and the slider are the declaration's."""
    import dataclasses

    from lib_omost.forge import omost_ui
    from lib_omost.llm.events import SAMPLING_SETTINGS
    assert [s.name for s in SAMPLING_SETTINGS] == ["temperature", "top_p", "max_new_tokens"]
    defaults, choice = GenerationSettings(), omost_chat.LLMChoice()
    for setting in SAMPLING_SETTINGS:
        slider = omost_ui.sampling_slider(setting)
        assert (slider.minimum, slider.maximum, slider.value) == (setting.minimum, setting.maximum, setting.default)
        assert getattr(defaults, setting.name) == getattr(choice, setting.name) == setting.default
        for value in (setting.minimum, setting.maximum):
            dataclasses.replace(defaults, **{setting.name: value})          # both ends are accepted
        tiny = 1 if setting.whole else 1e-9
        for value in (setting.minimum - tiny, setting.maximum + tiny):
            with pytest.raises(ValueError, match=f"{setting.name} must be"):
                dataclasses.replace(defaults, **{setting.name: value})
