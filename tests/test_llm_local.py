"""Local transformers backend on a tiny random Llama and a tokenizer trained here (loaded by the real code)."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from lib_omost.llm import local
from lib_omost.llm.events import Finished, GenerationSettings, LLMError, TextDelta
from lib_omost.llm.local import (IncrementalDecoder, LocalBackend, LocalModelSpec, generate_kwargs, load_model,
                                 offload_model, prompt_ids, unload_model)
from lib_omost.llm.prompts import generic_system_prompt

SPECIALS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
MESSAGES = [{"role": "system", "content": "You compose images."},
            {"role": "user", "content": "a dragon over a castle"}]


def build_tokenizer(chat_template: str | None = TEMPLATE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([generic_system_prompt()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", chat_template=chat_template)


def build_model_dir(path, chat_template: str | None = TEMPLATE):
    """A 2-layer, hidden-32 Llama with random weights; its end token is suppressed so that greedy runs
    always reach max_new_tokens (tests that need an end token set one)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(chat_template)
    tokenizer.save_pretrained(path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.suppress_tokens = [tokenizer.eos_token_id]
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return str(build_model_dir(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture
def backend(model_dir):
    return LocalBackend(LocalModelSpec(model_dir, device="cpu"))


def run(backend, messages=MESSAGES, stop=None, **settings):
    events = list(backend.stream(messages, GenerationSettings(**settings), stop or threading.Event()))
    assert isinstance(events[-1], Finished) and all(isinstance(e, TextDelta) for e in events[:-1])
    return "".join(e.text for e in events[:-1]), events


def plain_greedy_ids(backend, messages, n):
    loaded = backend.load()
    ids = prompt_ids(loaded, messages)
    out = loaded.model.generate(**generate_kwargs(loaded, ids, GenerationSettings(temperature=0, max_new_tokens=n),
                                                  prompt_lookup=False))
    return out[0, ids.shape[-1]:].tolist()


def decode(backend, ids):
    return backend.load().tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self.hook)

    def hook(self, *args):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_stream_equals_plain_generate(backend):
    text, events = run(backend, temperature=0, max_new_tokens=40, prompt_lookup=False)
    ids = plain_greedy_ids(backend, MESSAGES, 40)
    assert len(ids) == 40
    assert text == decode(backend, ids)
    assert events[-1].reason == "length" and events[-1].tokens == 40
    counts = [e.tokens for e in events[:-1]]
    assert counts == sorted(counts) and counts[-1] == 40


def test_prompt_lookup_is_token_identical_and_cut_at_max_new_tokens(backend):
    # a multi-round edit: the prompt holds a previous answer that the new one mostly repeats
    previous = decode(backend, plain_greedy_ids(backend, MESSAGES, 60))
    messages = MESSAGES + [{"role": "assistant", "content": previous},
                           {"role": "user", "content": "a dragon over a castle"}]
    model = backend.load().model
    for n in (1, 17, 60, 123):
        with ForwardCounter(model) as plain:
            text_plain, ev_plain = run(backend, messages, temperature=0, max_new_tokens=n, prompt_lookup=False)
        with ForwardCounter(model) as lookup:
            text_lookup, ev_lookup = run(backend, messages, temperature=0, max_new_tokens=n, prompt_lookup=True)
        assert text_lookup == text_plain == decode(backend, plain_greedy_ids(backend, messages, n))
        assert ev_lookup[-1].tokens == ev_plain[-1].tokens == n  # lookup's overshoot is cut
        assert ev_lookup[-1].reason == "length"
        assert plain.calls == n
        if n >= 60:
            assert lookup.calls < n / 2  # candidates were accepted: lookup really ran


def test_prompt_lookup_auto_setting():
    assert GenerationSettings(temperature=0).use_prompt_lookup(has_previous_answer=False)
    assert not GenerationSettings(temperature=0.6).use_prompt_lookup(has_previous_answer=False)
    assert GenerationSettings(temperature=0.6).use_prompt_lookup(has_previous_answer=True)
    assert not GenerationSettings(temperature=0, prompt_lookup=False).use_prompt_lookup(True)


def test_stop_from_another_thread_ends_generation(backend):
    stop, first = threading.Event(), threading.Event()
    stopper = threading.Thread(target=lambda: first.wait(10) and stop.set())
    stopper.start()
    model = backend.load().model
    events = []
    with ForwardCounter(model) as counter:
        for event in backend.stream(MESSAGES, GenerationSettings(temperature=0, max_new_tokens=500), stop):
            events.append(event)
            if isinstance(event, TextDelta) and not first.is_set():
                first.set()
                assert stop.wait(10)
    stopper.join()
    finished = events[-1]
    assert finished.reason == "stopped"
    assert finished.tokens < 500 and counter.calls < 500
    text = "".join(e.text for e in events[:-1])
    assert text == decode(backend, plain_greedy_ids(backend, MESSAGES, finished.tokens))
    assert not backend.load().busy.locked()  # generate() has returned


def test_closing_the_stream_early_ends_the_generation(backend):
    model = backend.load().model
    with ForwardCounter(model) as counter:
        stream = backend.stream(MESSAGES, GenerationSettings(temperature=0, max_new_tokens=1000), threading.Event())
        assert isinstance(next(stream), TextDelta)
        stream.close()
        assert not backend.load().busy.locked()
    assert counter.calls < 1000


def test_one_long_lived_generation_thread_per_model(model_dir):
    unload_model()
    backend = LocalBackend(LocalModelSpec(model_dir, device="cpu"))
    threads = set()
    handle = backend.load().model.register_forward_hook(lambda *a: threads.add(threading.get_ident()))
    try:
        run(backend, temperature=0, max_new_tokens=3)
        run(backend, temperature=0, max_new_tokens=3)
    finally:
        handle.remove()
    (ident,) = threads
    assert ident != threading.get_ident()
    worker = next(t for t in threading.enumerate() if t.ident == ident)
    assert worker.name == "omost-llm-generate"
    unload_model()
    worker.join(10)
    assert not worker.is_alive()  # unloading ends the thread


def test_seed_reproduces_and_keeps_global_rng(backend):
    before = torch.get_rng_state()
    a, _ = run(backend, temperature=1.0, top_p=1.0, max_new_tokens=30, seed=123)
    b, _ = run(backend, temperature=1.0, top_p=1.0, max_new_tokens=30, seed=123)
    c, _ = run(backend, temperature=1.0, top_p=1.0, max_new_tokens=30, seed=124)
    assert a == b and a != c
    assert torch.equal(torch.get_rng_state(), before)


def test_end_token_finishes_with_stop(backend):
    ids = plain_greedy_ids(backend, MESSAGES, 20)
    end = ids[7]
    k = ids.index(end)
    config = backend.load().model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = end
    try:
        text, events = run(backend, temperature=0, max_new_tokens=20)
    finally:
        config.eos_token_id = saved
    assert events[-1].reason == "stop" and events[-1].tokens == k + 1
    assert text == decode(backend, ids[:k])


def test_incremental_decoder_deltas_join_to_the_full_text(backend):
    tokenizer = backend.load().tokenizer
    ids = tokenizer.encode("caf\u00e9 \u2014 d\u00e9j\u00e0 vu \U0001F409 over <|end|> a castle, 'quoted' text")
    generator = torch.Generator().manual_seed(0)
    ids += torch.randint(0, len(tokenizer), (200,), generator=generator).tolist()
    class PythonOnly:  # a tokenizer without a Rust backend: the decoder falls back to tokenizer.decode
        decode = tokenizer.decode

    for batch, tok in [(1, tokenizer), (2, tokenizer), (5, tokenizer), (64, tokenizer), (3, PythonOnly())]:
        decoder, parts = IncrementalDecoder(tok), []
        for i in range(0, len(ids), batch):
            parts.append(decoder.push(ids[i:i + batch]))
        parts.append(decoder.flush())
        assert "".join(parts) == decode(backend, ids)


def test_chat_template_token_count_and_context(backend):
    tokenizer = backend.load().tokenizer
    expected = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert backend.count_tokens(MESSAGES) == (len(expected), True)
    assert expected[-1] == tokenizer.convert_tokens_to_ids("<|assistant|>")
    assert backend.context_length() == 2048


def test_model_cache_and_unload(model_dir, monkeypatch):
    spec = LocalModelSpec(model_dir, device="cpu")
    first = load_model(spec)
    loads = []
    real = local._load
    monkeypatch.setattr(local, "_load", lambda s: loads.append(s) or real(s))
    backend = LocalBackend(spec)
    run(backend, temperature=0, max_new_tokens=3)
    run(backend, temperature=0, max_new_tokens=3)
    assert load_model(spec) is first and loads == []
    assert offload_model() and local.cached_model() is first
    assert unload_model() and local.cached_model() is None
    assert not unload_model()
    second = load_model(spec)
    assert second is not first and loads == [spec]


def test_quantised_models_need_bitsandbytes_and_cuda(tmp_path):
    problem = local.quantization_problem()
    assert problem is not None and "bitsandbytes" in problem  # not importable on this machine
    with pytest.raises(LLMError, match="needs bitsandbytes and a CUDA GPU"):
        load_model(LocalModelSpec("lllyasviel/omost-llama-3-8b-4bits", local_files_only=True))
    config = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 1, "intermediate_size": 8,
              "quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LLMError, match=r"8-bit quantised and needs bitsandbytes and a CUDA GPU"):
        load_model(LocalModelSpec(str(tmp_path)))


def test_remote_code_is_never_run_by_default(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}))
    assert LocalModelSpec(str(tmp_path)).trust_remote_code is False
    with pytest.raises(LLMError, match="trust_remote_code"):
        load_model(LocalModelSpec(str(tmp_path), local_files_only=True))
    assert not marker.exists()


def test_missing_model_and_missing_chat_template(tmp_path):
    with pytest.raises(LLMError, match="cannot load model"):
        load_model(LocalModelSpec(str(tmp_path / "nowhere"), local_files_only=True))
    build_model_dir(tmp_path / "plain", chat_template=None)
    with pytest.raises(LLMError, match="no chat template"):
        load_model(LocalModelSpec(str(tmp_path / "plain")))


def test_bad_specs_and_settings():
    with pytest.raises(ValueError, match="dtype"):
        LocalModelSpec("x", dtype="int3")
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(temperature=-1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(top_p=0)


def test_chat_loop_and_cli_with_the_local_model(backend, model_dir, tmp_path, capsys):
    from lib_omost.llm.chat import ask
    from lib_omost.llm.cli import main
    from lib_omost.llm.conversation import Conversation
    from lib_omost.terminal import printable

    expected = decode(backend, plain_greedy_ids(backend, [{"role": "system", "content": "S"},
                                                          {"role": "user", "content": "a cat"}], 25))
    conversation = Conversation("S")
    events = list(ask(backend, conversation, "a cat", GenerationSettings(temperature=0, max_new_tokens=25)))
    finished = events[-1]
    assert finished.reason == "length" and finished.tokens == 25 and finished.text == expected
    assert finished.result is None and "no canvas code" in finished.parse_error  # random weights
    assert conversation.last_answer == expected

    prompt_file = tmp_path / "system.txt"
    prompt_file.write_text("S", encoding="utf-8")
    answer_file = tmp_path / "answer.md"
    code = main(["a cat", "--model-path", model_dir, "--device", "cpu", "--temperature", "0",
                 "--max-new-tokens", "25", "--system-prompt-file", str(prompt_file), "--answer", str(answer_file)])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == printable(expected) + "\n"  # random weights write control characters
    assert "[omost] finished (length): 25 tokens" in captured.err
    assert "error: no canvas in the answer" in captured.err
    assert answer_file.read_text(encoding="utf-8") == expected
