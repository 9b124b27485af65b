"""OpenAI-compatible backend over real HTTP against a small SSE server on 127.0.0.1 started by the test."""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from lib_omost.llm.chat import ask, retry
from lib_omost.llm.conversation import Conversation
from lib_omost.llm.events import Failed, Finished, GenerationSettings, LLMError, TextDelta
from lib_omost.llm.openai_compat import (ChunkTemplate, EndpointConfig, OpenAIBackend, Secret, SSEDecoder, SSEError,
                                         _read_stream, _Reading, api_root, server_message)

KEY = "sk-test-0123456789abcdef"
PIECES = ["```python\n", "canvas = Canvas()\n", "canvas.set_global_description(description='A cat.', ",
          "detailed_descriptions=['A cat on a mat.'], tags='cat, mat', HTML_web_color_name='white')\n", "```"]


def chunk(content=None, finish=None, role=None) -> bytes:
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    obj = {"id": "x", "object": "chat.completion.chunk", "model": "omost-test",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def good_stream(pieces=PIECES) -> list[bytes]:
    return ([chunk(role="assistant")] + [chunk(p) for p in pieces] + [chunk(finish="stop")]
            + [b": keep-alive comment\n\n", b"data: [DONE]\n\n"])


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client that leaves early (a limit, Stop, an error) is what these tests make happen: not a failure."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class Server:
    """A scripted OpenAI-compatible server. `script(handler, body)` writes the chat response."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script = lambda handler, body: handler.sse(good_stream())
        self.models = {"object": "list", "data": [{"id": "omost-test", "max_model_len": 8192}]}
        self.models_script = None  # (handler) -> None: writes the /v1/models answer instead of `models`
        self.release = threading.Event()  # ends the slow scripts at teardown
        self.client_left = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def json_reply(self, status, obj, content_type="application/json"):
                data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def sse(self, parts, chunked=True, end=True, tail=b""):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                if chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    for part in parts:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                        self.wfile.flush()
                    self.wfile.write((b"0\r\n\r\n" if chunked and end else b"") + tail)
                except (BrokenPipeError, ConnectionResetError):  # the client left early (stop, errors)
                    server.client_left += 1

            def do_GET(self):
                server.requests.append({"path": self.path, "headers": dict(self.headers)})
                if self.path == "/v1/models" and server.models_script is not None:
                    server.models_script(self)
                elif self.path == "/v1/models":
                    self.json_reply(200, server.models)
                else:
                    self.json_reply(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if self.path != "/v1/chat/completions":
                    self.json_reply(404, {"error": {"message": f"no route {self.path}"}})
                    return
                server.script(self, body)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def chats(self):
        return [r for r in self.requests if r["path"] == "/v1/chat/completions"]


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def backend_for(server, **config):
    config.setdefault("read_timeout", 5.0)
    return OpenAIBackend(EndpointConfig(server.url, **config))


def collect(backend, messages=None, stop=None, **settings):
    messages = messages or [{"role": "user", "content": "a cat"}]
    events = list(backend.stream(messages, GenerationSettings(**settings), stop or threading.Event()))
    assert isinstance(events[-1], Finished) and all(isinstance(e, TextDelta) for e in events[:-1])
    return "".join(e.text for e in events[:-1]), events


def test_deltas_are_assembled_and_the_model_is_detected(server):
    backend = backend_for(server, api_key=KEY)
    text, events = collect(backend, temperature=0.6, top_p=0.9, max_new_tokens=77, seed=5)
    assert text == "".join(PIECES)
    assert [e.tokens for e in events[:-1]] == list(range(1, len(PIECES) + 1))
    assert events[-1].reason == "stop" and events[-1].tokens == len(PIECES)
    (request,) = server.chats
    assert request["body"] == {"model": "omost-test", "messages": [{"role": "user", "content": "a cat"}],
                               "stream": True, "temperature": 0.6, "top_p": 0.9, "max_tokens": 77, "seed": 5}
    assert request["headers"]["Authorization"] == "Bearer " + KEY
    assert backend.context_length() == 8192
    assert [r["path"] for r in server.requests] == ["/v1/models", "/v1/chat/completions"]  # models cached


def test_named_model_skips_detection_and_greedy_sends_temperature_zero(server):
    backend = backend_for(server, model="my-model")
    collect(backend, temperature=0)
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"]
    assert server.chats[0]["body"]["model"] == "my-model" and server.chats[0]["body"]["temperature"] == 0.0
    assert "seed" not in server.chats[0]["body"] and "Authorization" not in server.chats[0]["headers"]


def test_usage_and_length_finish(server):
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 42}}\n\n'
    server.script = lambda h, body: h.sse([chunk("ab"), chunk("c", finish="length"), usage, b"data: [DONE]\n\n"])
    text, events = collect(backend_for(server))
    assert text == "abc" and events[-1].reason == "length" and events[-1].tokens == 42


def test_seed_is_dropped_when_the_server_rejects_it(server):
    def script(h, body):
        if "seed" in body:
            h.json_reply(400, {"error": {"message": "Unrecognized request argument supplied: seed"}})
        else:
            h.sse(good_stream())
    server.script = script
    text, _ = collect(backend_for(server), seed=3)
    assert text == "".join(PIECES)
    assert ["seed" in r["body"] for r in server.chats] == [True, False]


def test_server_that_ignores_stream_gets_a_whole_answer(server):
    answer = {"choices": [{"message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
              "usage": {"completion_tokens": 2}}
    server.script = lambda h, body: h.json_reply(200, answer)
    text, events = collect(backend_for(server))
    assert text == "hello" and events[-1].tokens == 2 and events[-1].reason == "stop"


def test_stop_ends_the_stream(server):
    stop = threading.Event()

    def script(h, body):
        h.sse([chunk("first")], end=False)
        server.release.wait(10)
    server.script = script
    events = []
    for event in backend_for(server).stream([{"role": "user", "content": "x"}], GenerationSettings(), stop):
        events.append(event)
        stop.set()
    assert [type(e) for e in events] == [TextDelta, Finished]
    assert events[-1].reason == "stopped" and events[-1].tokens == 1


# ---- failures: each a clear message, the conversation unchanged -------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAILURES = {
    "refused": (None, r"cannot connect to http://127\.0\.0\.1:\d+/v1: connection refused \(is the server running"),
    "401": (lambda h, body: h.json_reply(401, {"error": {"message": "Invalid API key provided", "type": "auth"}}),
            r"HTTP 401 Unauthorized: Invalid API key provided \(check the API key\)"),
    "500": (lambda h, body: h.json_reply(500, b"model crashed: out of memory", "text/plain"),
            r"HTTP 500 Internal Server Error: model crashed: out of memory"),
    "garbage line": (lambda h, body: h.sse([chunk("ok"), b"<html>502 Bad Gateway</html>\n\n"]),
                     r"the server sent a line that is not a server-sent event \(line 3\): '<html>502 Bad Gateway</html>'"),
    "garbage json": (lambda h, body: h.sse([chunk("ok"), b"data: {oops\n\n"]),
                     r"the server sent an event whose data is not JSON: '\{oops'"),
    "error event": (lambda h, body: h.sse([chunk("ok"), b'data: {"error": {"message": "context overflow"}}\n\n']),
                    r"the server reported an error during the answer: context overflow"),
    "early close": (lambda h, body: h.sse([chunk("a"), chunk("b")], chunked=False),
                    r"the connection closed mid-answer after 2 tokens \(the server sent no finish reason and no \[DONE\]\)"),
    "cut chunk": (lambda h, body: h.sse([chunk("a")], end=False, tail=b"20\r\ndata: {"),  # 32 bytes promised
                  r"the connection closed mid-answer after 1 tokens \(RemoteProtocolError: "),
    "slow": ("slow", r"the server sent nothing for 0\.3 s \(read timeout\)"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failures_give_clear_messages_and_leave_the_conversation_unchanged(server, case):
    script, message = FAILURES[case]
    if script == "slow":
        def script(h, body):
            h.sse([chunk("first ")], end=False)
            server.release.wait(10)
    if script is not None:
        server.script = script
    url = server.url if case != "refused" else f"http://127.0.0.1:{_free_port()}"
    backend = OpenAIBackend(EndpointConfig(url, model="m", read_timeout=0.3, connect_timeout=2, api_key=KEY))

    with pytest.raises(LLMError, match=message):
        collect(backend)

    conversation = Conversation("system prompt")
    conversation.add_turn("first request", "first answer")
    before = list(conversation.turns)
    for events in (ask(backend, conversation, "make it blue"), retry(backend, conversation)):
        events = list(events)
        assert isinstance(events[-1], Failed) and not any(isinstance(e, Finished) for e in events)
        assert conversation.turns == before
        assert KEY not in events[-1].message


def test_models_list_errors(server):
    server.models = {"data": []}
    with pytest.raises(LLMError, match="lists no models; give the model name"):
        collect(backend_for(server))
    server2 = Server()
    try:
        server2.models = ["not", "a", "list"]
        with pytest.raises(LLMError, match="not an OpenAI model list"):
            collect(backend_for(server2))
    finally:
        server2.close()


# ---- the API key stays secret -------------------------------------------------------------------

def test_api_key_never_in_repr_logs_or_messages(server, caplog):
    config = EndpointConfig(server.url, model="m", api_key=KEY)
    assert isinstance(config.api_key, Secret) and config.api_key.reveal() == KEY
    for shown in (repr(config), str(config), repr(config.api_key), str(config.api_key),
                  OpenAIBackend(config).describe()):
        assert KEY not in shown
    assert "***" in repr(config)
    import dataclasses
    assert KEY not in repr(dataclasses.asdict(config))
    with pytest.raises(TypeError):  # cannot slip into JSON (infotext) by accident
        json.dumps(dataclasses.asdict(config))
    server.script = lambda h, body: h.json_reply(
        401, {"error": {"message": f"key {h.headers['Authorization'][7:]} is not valid"}})
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LLMError) as info:
        collect(OpenAIBackend(config))
    assert KEY not in str(info.value) and "key *** is not valid" in str(info.value)
    assert caplog.records and KEY not in caplog.text  # httpx/httpcore did log the request, without the key


def test_empty_api_key_means_none():
    assert EndpointConfig("http://h:1", api_key="  ").api_key is None


# ---- pure parts ----------------------------------------------------------------------------------

def test_api_root_forms():
    for url in ("http://h:8080", "http://h:8080/", "http://h:8080/v1", "http://h:8080/v1/",
                "http://h:8080/v1/chat/completions", "http://h:8080/v1/models"):
        assert api_root(url) == "http://h:8080/v1"
    assert api_root("https://x.org/openai/v1") == "https://x.org/openai/v1"
    for bad in ("h:8080", "ftp://h/v1", "", "http://"):
        with pytest.raises(ValueError, match="http://host:port"):
            api_root(bad)


def test_bad_endpoint_settings():
    with pytest.raises(ValueError, match="read_timeout"):
        EndpointConfig("http://h:1", read_timeout=0)
    with pytest.raises(ValueError, match="context_length"):
        EndpointConfig("http://h:1", context_length=0)


def test_sse_decoder_split_anywhere():
    stream = (b": comment\r\nevent: message\r\ndata: {\"a\":\ndata: 1}\r\nid: 7\r\n\r\n"
              b"data: x\n\ndata: [DONE]")
    expected = [("message", '{"a":\n1}'), ("", "x"), ("", "[DONE]")]
    for size in (1, 2, 3, 7, len(stream)):
        decoder, events = SSEDecoder(), []
        for i in range(0, len(stream), size):
            events += decoder.feed(stream[i:i + size])
        events += decoder.close()
        assert events == expected
    with pytest.raises(SSEError, match="line 2") as info:
        SSEDecoder().feed(b"data: 1\nnonsense\n")
    assert info.value.line == b"nonsense" and "nonsense" not in str(info.value)  # the caller quotes it


def test_server_message_forms():
    assert server_message(b'{"error": {"message": "bad"}}') == "bad"
    assert server_message(b'{"error": "model not found"}') == "model not found"
    assert server_message(b'{"detail": "Not Found"}') == "Not Found"
    assert server_message(b"") == "(empty response body)"
    assert server_message(b"x" * 1000) == "x" * 300 + "..."


# ---- over HTTP through the chat loop and the CLI --------------------------------------------------

def test_ask_over_http_commits_the_turn_and_sends_the_history(server):
    from lib_omost.canvas import example_canvas, parse_answer
    from lib_omost.llm.conversation import canvas_answer

    answer = canvas_answer(example_canvas())
    server.script = lambda h, body: h.sse(good_stream([answer[i:i + 50] for i in range(0, len(answer), 50)]))
    conversation = Conversation("SYS")
    conversation.add_turn("q1", "a1")
    events = list(ask(backend_for(server), conversation, "q2", GenerationSettings(seed=1)))
    assert isinstance(events[-1], Finished) and events[-1].text == answer
    assert events[-1].result.canvas == parse_answer(answer).canvas == example_canvas()
    assert conversation.turns[-1].user == "q2" and conversation.turns[-1].assistant == answer
    assert server.chats[0]["body"]["messages"] == Conversation("SYS", conversation.turns[:1]).messages("q2")


def test_cli_streams_and_writes_the_canvas(server, tmp_path, capsys, monkeypatch):
    from lib_omost.__main__ import main
    from lib_omost.canvas import canvas_to_json, example_canvas
    from lib_omost.llm.conversation import canvas_answer

    canvas = example_canvas()
    answer = canvas_answer(canvas)
    server.script = lambda h, body: h.sse(good_stream([answer[i:i + 50] for i in range(0, len(answer), 50)]))
    monkeypatch.setenv("OMOST_TEST_KEY", KEY)
    out_json, out_png, out_answer = tmp_path / "c.json", tmp_path / "c.png", tmp_path / "a.md"
    code = main(["chat", "a cat and a dog", "--endpoint", server.url, "--api-key-env", "OMOST_TEST_KEY",
                 "--seed", "4", "--json", str(out_json), "--png", str(out_png), "--answer", str(out_answer)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith(answer + "\n")
    assert f"wrote {out_json}" in captured.out and f"wrote {out_png}" in captured.out
    assert canvas.regions[0].description[:30] in captured.out  # the region table
    assert "[omost] finished (stop):" in captured.err
    assert json.loads(out_json.read_text()) == canvas_to_json(canvas)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_answer.read_text() == answer
    (request,) = server.chats
    assert request["headers"]["Authorization"] == "Bearer " + KEY and request["body"]["seed"] == 4
    assert KEY not in captured.out + captured.err


def test_cli_edit_sends_the_canvas_as_the_previous_answer(server, tmp_path, capsys):
    from lib_omost.canvas import canvas_to_json, example_canvas
    from lib_omost.llm.cli import main
    from lib_omost.llm.conversation import canvas_answer
    from lib_omost.llm.prompts import generic_system_prompt

    canvas = example_canvas()
    (tmp_path / "in.json").write_text(json.dumps(canvas_to_json(canvas)))
    server.script = lambda h, body: h.sse(good_stream([canvas_answer(canvas)]))
    assert main(["make the sofa red", "--endpoint", server.url + "/v1", "--model", "m", "--generic-prompt",
                 "--edit", str(tmp_path / "in.json"), "--quiet"]) == 0
    assert server.chats[0]["body"]["messages"] == [
        {"role": "system", "content": generic_system_prompt()},
        {"role": "user", "content": canvas.global_region.description},
        {"role": "assistant", "content": canvas_answer(canvas)},
        {"role": "user", "content": "make the sofa red"}]
    assert canvas_answer(canvas) not in capsys.readouterr().out  # --quiet


def test_cli_errors(server, capsys, monkeypatch):
    from lib_omost.llm.cli import main

    monkeypatch.delenv("OMOST_NO_SUCH_KEY", raising=False)
    assert main(["x", "--endpoint", server.url, "--api-key-env", "OMOST_NO_SUCH_KEY"]) == 2
    assert "'OMOST_NO_SUCH_KEY' holding the API key is not set" in capsys.readouterr().err
    server.script = lambda h, body: h.json_reply(500, {"error": "boom"})
    assert main(["x", "--endpoint", server.url, "--model", "m"]) == 1
    assert capsys.readouterr().err.strip() == "error: the server answered HTTP 500 Internal Server Error: boom"
    with pytest.raises(SystemExit):
        main(["x", "--model-path", "p", "--model", "m"])
    assert "go with --endpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["x"])


# ---- the envelope template: same results as parsing every event in full ------------------------------

class _Response:
    headers = {"content-type": "text/event-stream"}

    def __init__(self, chunks):
        self.chunks = chunks

    def iter_bytes(self):
        return iter(self.chunks)


def _full_parse(chunks):
    """The reference: every event's JSON parsed in full."""
    text, finish = [], None
    for line in b"".join(chunks).split(b"\n"):
        if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
            obj = json.loads(line[5:])
            for choice in obj.get("choices") or ():
                text.append((choice.get("delta") or {}).get("content") or "")
                finish = choice.get("finish_reason") or finish
    return "".join(text), finish


contents = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(
    ['"content": "x"', '\\"', "\\u00e9", 'a"b', "content", "\n", "é😀", ""])


@st.composite
def envelopes(draw):
    """A server's chunk layout: key order, spacing, extra fields (some holding "content")."""
    extra = draw(st.sampled_from([{}, {"logprobs": {"content": [{"token": "a"}]}}, {"system_fingerprint": "fp"},
                                  {"content": "not the delta"}]))
    order = draw(st.permutations(["id", "object", "created", "model", "choices"]))
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    ascii_only = draw(st.booleans())
    space = draw(st.sampled_from([b"data: ", b"data:"]))
    role_first = draw(st.booleans())
    choice_order = draw(st.permutations(["index", "delta", "finish_reason"] + list(extra)))

    def event(content, finish=None):
        choice = {"index": 0, "delta": ({"role": "assistant"} if role_first else {}) | {"content": content},
                  **extra, "finish_reason": finish}
        choice = {k: choice[k] for k in choice_order}
        body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}
        body = {k: body[k] for k in order}
        return space + json.dumps(body, separators=separators, ensure_ascii=ascii_only).encode() + b"\n\n"
    return event


@hsettings(max_examples=150, deadline=None)
@given(envelopes(), st.lists(contents, min_size=1, max_size=12), st.booleans())
def test_template_reading_equals_full_parsing(event, texts, split):
    chunks = [event(t) for t in texts] + [event("", finish="stop"), b"data: [DONE]\n\n"]
    if split:  # a chunk boundary inside an event must not confuse the template
        joined = b"".join(chunks)
        chunks = [joined[i:i + 37] for i in range(0, len(joined), 37)]
    events = list(_read_stream(_Response(chunks), threading.Event(), _Reading()))
    text, finish = _full_parse(chunks)
    assert "".join(e.text for e in events[:-1]) == text == "".join(texts)
    assert events[-1].reason == finish == "stop"


def test_template_is_learned_and_used_only_for_plain_token_events():
    template = ChunkTemplate()
    first = chunk("hello")
    template.learn(first, json.loads(first[6:]))
    assert template.prefix is not None
    assert template.content(chunk('a "quoted" \\ piece')) == 'a "quoted" \\ piece'
    assert template.content(chunk("x", finish="length")) is None  # different envelope
    assert template.content(chunk("x") + chunk("y")) is None  # two events in one chunk
    assert template.content(b'data: {"error": {"message": "boom"}}\n\n') is None
    stopping = ChunkTemplate()
    last = chunk("bye", finish="stop")
    stopping.learn(last, json.loads(last[6:]))
    assert stopping.prefix is None  # never learned from an event that carries more than a token
