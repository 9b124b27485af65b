"""The OpenAI-compatible client against a REAL, already running server (llama.cpp's llama-server,
llama-cpp-python's server, Ollama /v1, vLLM, LM Studio, ...). Starts nothing; skipped unless
OMOST_LLM_SERVER_URL is set. What is tested is the protocol, so any model works, even random weights
(build_llama_server.sh builds llama.cpp and a tiny random GGUF). Environment:

  OMOST_LLM_SERVER_URL      the server, e.g. http://127.0.0.1:8080/v1 (unset: every test is skipped)
  OMOST_LLM_SERVER_MODEL    the model name to ask for (default: the first one /v1/models lists)
  OMOST_LLM_SERVER_API_KEY  the API key, if the server wants one
  OMOST_LLM_SERVER_CONTEXT  the context (tokens) the server gives one request, when /v1/models does not say it
                            (used to size the "too long" prompt; default 32768)

Where the server exposes llama.cpp's `/slots` monitor, the tests also watch the server's own generation:
deltas arrive while it is still generating, and Stop ends the generation there (the slot frees long before
max_tokens: polled while it frees, its token count stays far below). Servers without it skip those two
observations and say so (the monitor is probed once, at the start).
"""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from lib_omost.llm.chat import ask
from lib_omost.llm.conversation import Conversation
from lib_omost.llm.events import Finished, GenerationSettings, LLMError, TextDelta
from lib_omost.llm.openai_compat import EndpointConfig, OpenAIBackend, api_root, server_message
from lib_omost.llm.prompts import omost_system_prompt

URL = os.environ.get("OMOST_LLM_SERVER_URL", "").strip()
MODEL = os.environ.get("OMOST_LLM_SERVER_MODEL") or None
API_KEY = os.environ.get("OMOST_LLM_SERVER_API_KEY") or None
CONTEXT = int(os.environ.get("OMOST_LLM_SERVER_CONTEXT") or 0) or None

pytestmark = pytest.mark.skipif(not URL, reason="OMOST_LLM_SERVER_URL is not set (no LLM server to test against)")

ASK = [{"role": "user", "content": "Draw a cat on a sofa."}]
LONG = 2000  # max_tokens of the generations that are stopped early
POLLS = 200  # bounded waits for the server's slot to free: at most POLLS x 0.05 s


def backend(**config) -> OpenAIBackend:
    config = {"model": MODEL, "api_key": API_KEY, "read_timeout": 300.0, **config}
    return OpenAIBackend(EndpointConfig(URL, **config))


def http():
    import httpx

    headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
    return httpx.Client(timeout=300.0, headers=headers)


def server_root() -> str:
    return api_root(URL)[: -len("/v1")]


MONITOR: dict[str, bool] = {}  # "slots": whether the server has llama.cpp's /slots (probed once)


@pytest.fixture(scope="module", autouse=True)
def probe_the_monitor():
    with http() as client:
        MONITOR["slots"] = client.get(server_root() + "/slots").status_code == 200


def slots() -> list[dict] | None:
    """llama.cpp's /slots monitor (one entry per slot), or None where the server has none."""
    if not MONITOR["slots"]:
        return None
    with http() as client:
        response = client.get(server_root() + "/slots")
    response.raise_for_status()
    return response.json()


def busy(slot: dict) -> bool:
    return bool(slot.get("is_processing"))


def decoded(slot: dict) -> int:
    """Tokens the slot generated for its current (or last) request."""
    token = slot.get("next_token")
    token = token[0] if isinstance(token, list) and token else token
    return int((token or {}).get("n_decoded", 0))


def wait_idle() -> list[int]:
    """Poll /slots until no slot is busy; the tokens the busy slots had generated at each poll."""
    seen = []
    for _ in range(POLLS):
        state = slots()
        if not any(busy(s) for s in state):
            return seen
        seen += [decoded(s) for s in state if busy(s)]
        time.sleep(0.05)
    raise AssertionError(f"the server still generates after {POLLS} polls: {slots()}")


def run(b: OpenAIBackend, settings: GenerationSettings, messages=ASK) -> tuple[str, Finished, int]:
    """(text, Finished, number of TextDelta events) of one streamed answer."""
    events = list(b.stream(messages, settings, threading.Event()))
    assert isinstance(events[-1], Finished) and all(isinstance(e, TextDelta) for e in events[:-1]), events[-3:]
    return "".join(e.text for e in events[:-1]), events[-1], len(events) - 1


def raw_chat(body: dict) -> tuple[int, dict | bytes]:
    """One non-streamed request sent by hand: the server's own answer, to compare the client with."""
    b = backend()
    with http() as client:
        response = client.post(api_root(URL) + "/chat/completions",
                               json={"model": b.model_name(), "messages": ASK, **body})
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.content


# ---- /v1/models ---------------------------------------------------------------------------------------

def test_the_model_list_is_read():
    with http() as client:
        listed = client.get(api_root(URL) + "/models").json()["data"]
    b = backend(model=None)
    assert [m["id"] for m in b.models()] == [m["id"] for m in listed]
    assert b.model_name() == listed[0]["id"]
    context = b.context_length()
    assert context is None or context >= 1
    slot_context = (listed[0].get("meta") or {}).get("n_ctx")  # llama.cpp: the context one request gets
    if slot_context:
        assert context == slot_context
    print(f"models: {[m['id'] for m in listed]}; context read from the list: {context}")


# ---- streaming and Stop -------------------------------------------------------------------------------

def test_deltas_arrive_while_the_server_generates():
    stop = threading.Event()
    stream = backend().stream(ASK, GenerationSettings(temperature=0.8, seed=1, max_new_tokens=LONG), stop)
    try:
        first = next(stream)
        assert isinstance(first, TextDelta) and first.text
        state = slots()
        later = [next(stream) for _ in range(5)]
        assert all(isinstance(e, TextDelta) for e in later), later
    finally:
        stop.set()
        rest = list(stream)
    assert isinstance(rest[-1], Finished) and rest[-1].reason == "stopped"
    if state is None:
        pytest.skip("the server has no /slots monitor: deltas arrived one by one, but whether they came while "
                    "it generated is not observable")
    assert any(busy(s) and decoded(s) < LONG for s in state), (
        f"when the first delta arrived the server was not generating any more: {state}")


def test_stop_cancels_the_generation_on_the_server():
    """After Stop the slot frees while it has generated few tokens. Had the server gone on to max_tokens (LONG),
    the polls, 0.05 s apart, would have seen its count pass LONG / 2 on the way."""
    if slots() is None:
        pytest.skip("the server has no /slots monitor: its generation after Stop is not observable")
    wait_idle()
    stop = threading.Event()
    events = []
    for event in backend().stream(ASK, GenerationSettings(temperature=0.8, seed=2, max_new_tokens=LONG), stop):
        events.append(event)
        if len(events) == 3:
            stop.set()
    assert isinstance(events[-1], Finished) and events[-1].reason == "stopped" and len(events) <= 5
    seen = wait_idle()  # the slot frees ...
    assert max(seen, default=0) < LONG // 2, f"the server went on generating after Stop: {seen}"
    # ... and the next request is served in full
    text, finished, _ = run(backend(), GenerationSettings(temperature=0, max_new_tokens=8))
    assert finished.reason == "length" and text


# ---- max_tokens, seed, temperature --------------------------------------------------------------------

def test_max_tokens_is_honoured():
    text, finished, deltas = run(backend(), GenerationSettings(temperature=0, max_new_tokens=12))
    assert finished.reason == "length" and text
    assert 1 <= deltas <= 12 and finished.tokens <= 12
    status, answer = raw_chat({"max_tokens": 12, "temperature": 0})
    assert status == 200 and answer["choices"][0]["finish_reason"] == "length", answer
    if isinstance(answer.get("usage"), dict):
        assert answer["usage"]["completion_tokens"] == 12


def test_temperature_zero_is_greedy_whatever_the_seed():
    a, _, _ = run(backend(), GenerationSettings(temperature=0, seed=1, max_new_tokens=24))
    b, _, _ = run(backend(), GenerationSettings(temperature=0, seed=2, max_new_tokens=24))
    assert a == b


def test_seed_makes_sampling_repeatable():
    settings = dict(temperature=1.0, top_p=1.0, max_new_tokens=24)
    a, _, _ = run(backend(), GenerationSettings(seed=7, **settings))
    b, _, _ = run(backend(), GenerationSettings(seed=7, **settings))
    c, _, _ = run(backend(), GenerationSettings(seed=8, **settings))
    assert a == b, "the same seed gave two different answers: the server ignores the seed"
    assert a != c, "seeds 7 and 8 gave the same sampled answer"


# ---- the server's own errors --------------------------------------------------------------------------

def test_a_wrong_model_name_is_a_clear_error():
    name = "omost-no-such-model"
    status, answer = raw_chat({"model": name, "max_tokens": 4})
    if status == 200:
        pytest.skip("this server answers any model name with the model it has loaded")
    with pytest.raises(LLMError) as raised:
        run(backend(model=name), GenerationSettings(temperature=0, max_new_tokens=4))
    message = str(raised.value)
    own = server_message(answer if isinstance(answer, bytes) else json.dumps(answer).encode())
    assert message.startswith(f"the server answered HTTP {status} ") and own in message, (message, answer)
    print(f"wrong model: {message}")


def test_a_prompt_longer_than_the_context_is_a_clear_error():
    context = CONTEXT or backend().context_length() or 32768
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit "
    messages = [{"role": "user", "content": words * (context // 2)}]  # ≥ 4 tokens per repetition anywhere
    with pytest.raises(LLMError) as raised:
        run(backend(), GenerationSettings(temperature=0, max_new_tokens=8), messages)
    message = str(raised.value)
    assert message.startswith(("the server answered HTTP 4", "the server reported an error during the answer: ")), \
        message
    assert len(message) < 1000
    print(f"too long: {message}")


# ---- through the chat loop and the command line --------------------------------------------------------

def test_an_answer_that_is_not_a_canvas_is_reported_as_such():
    conversation = Conversation(omost_system_prompt())
    events = list(ask(backend(), conversation, "a cat on a sofa",
                      GenerationSettings(temperature=0.6, seed=3, max_new_tokens=48), threading.Event()))
    finished = events[-1]
    assert isinstance(finished, Finished), events[-1]
    if finished.result is not None:
        pytest.skip("the model answered with a canvas (a real Omost model?): nothing to report")
    assert finished.parse_error and len(conversation.turns) == 1


def test_the_cli_streams_and_reports_a_non_canvas_answer(capsys, monkeypatch):
    from lib_omost.__main__ import main

    if API_KEY:
        monkeypatch.setenv("OMOST_TEST_SERVER_KEY", API_KEY)
    code = main(["chat", "a cat on a sofa", "--endpoint", URL, "--max-new-tokens", "48", "--seed", "3",
                 *(["--model", MODEL] if MODEL else []),
                 *(["--api-key-env", "OMOST_TEST_SERVER_KEY"] if API_KEY else [])])
    out, err = capsys.readouterr()
    if code == 0:
        pytest.skip("the model answered with a canvas (a real Omost model?): nothing to report")
    assert code == 1 and "[omost] finished (" in err and "error: no canvas in the answer:" in err, err
    assert "Traceback" not in err and out.strip()  # the answer streamed to stdout
