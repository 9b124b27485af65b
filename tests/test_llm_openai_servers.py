"""Behaviours of real OpenAI-compatible servers, seen by the opt-in suite tests/llm_server, reproduced by the
loopback fake of test_llm_openai.py so that CI keeps them covered (README: "Against a real LLM server")."""

from __future__ import annotations


import pytest

from lib_omost.llm.events import LLMError, TextDelta
from test_llm_openai import backend_for, chunk, collect, server  # noqa: F401  (server: the fixture)

# llama-cpp-python 0.3.36, a prompt longer than the context: streamed, "200 OK" and a stream that ends with no
# event at all (the ValueError goes to its console); unstreamed, this 400.
TOO_LONG = {"error": {"message": "This model's maximum context length is 4096 tokens. However, you requested "
                                 "458774 tokens (458766 in the messages, 8 in the completion). Please reduce the "
                                 "length of the messages or completion.",
                      "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}


def llama_cpp_python_too_long(h, body):
    if body.get("stream"):
        h.sse([])
    else:
        h.json_reply(400, TOO_LONG)


def test_an_empty_stream_is_explained_by_the_same_request_unstreamed(server):
    server.script = llama_cpp_python_too_long
    with pytest.raises(LLMError) as raised:
        collect(backend_for(server, model="m"), seed=3, max_new_tokens=8)
    assert str(raised.value) == "the server answered HTTP 400 Bad Request: " + TOO_LONG["error"]["message"]
    streamed, unstreamed = (r["body"] for r in server.chats)
    assert streamed["stream"] is True and streamed["max_tokens"] == 8
    assert unstreamed == {**streamed, "stream": False, "max_tokens": 1}


def test_an_empty_stream_the_server_cannot_explain_keeps_its_own_message(server):
    def script(h, body):
        if body.get("stream"):
            h.sse([])
        else:
            h.json_reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "a"},
                                            "finish_reason": "length"}]})
    server.script = script
    with pytest.raises(LLMError, match=r"the connection closed mid-answer after 0 tokens \(the server sent no "
                                       r"finish reason and no \[DONE\]\)"):
        collect(backend_for(server, model="m"))
    assert len(server.chats) == 2


def test_a_stream_cut_after_some_tokens_is_not_asked_again(server):
    server.script = lambda h, body: h.sse([chunk("a"), chunk("b")])
    with pytest.raises(LLMError, match=r"after 2 tokens"):
        collect(backend_for(server, model="m"))
    assert len(server.chats) == 1


def test_crlf_events_as_llama_cpp_python_sends_them(server):
    """sse-starlette (llama-cpp-python's server) ends lines with CR LF: each event is `data: ...\\r\\n\\r\\n`."""
    pieces = ["canvas", " = ", "Canvas()"]
    events = [chunk(p).replace(b"\n\n", b"\r\n\r\n") for p in pieces]
    events += [chunk(finish="length").replace(b"\n\n", b"\r\n\r\n"), b"data: [DONE]\r\n\r\n"]
    server.script = lambda h, body: h.sse(events)
    text, finished = collect(backend_for(server, model="m"))
    assert text == "".join(pieces) and finished[-1].reason == "length"
    assert [e.text for e in finished[:-1] if isinstance(e, TextDelta)] == pieces


def test_llama_cpp_context_is_the_slot_context_not_the_trained_one(server):
    """llama.cpp's /v1/models (server from llama.cpp 0c1e57098): meta.n_ctx is the context one request gets
    (`-c` divided among `-np` slots), meta.n_ctx_train the model's; a router without the model loaded says 0."""
    meta = {"vocab_type": 2, "n_vocab": 1024, "n_ctx": 2048, "n_ctx_train": 4096, "n_embd": 64}
    server.models = {"object": "list", "data": [{"id": "tiny.gguf", "object": "model", "owned_by": "llamacpp",
                                                 "meta": meta}]}
    assert backend_for(server).context_length() == 2048
    meta["n_ctx"] = 0
    assert backend_for(server).context_length() == 4096
