"""Local backend: a Hugging Face causal LM run with transformers, streamed token by token.

transformers (and bitsandbytes, for the quantised Omost repos) are imported here lazily, inside the functions
that need them. One model is kept loaded (the cache) so a second chat does not reload it; `unload_model()`
frees it, `offload_model()` moves it to the CPU to free VRAM for diffusion.
"""

from __future__ import annotations

import functools
import gc
import importlib
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from lib_omost.llm.events import Finished, GenerationSettings, LLMError, TextDelta


@dataclass(frozen=True)
class KnownModel:
    quantization: str | None  # "4-bit" / "8-bit" when the repo's config needs bitsandbytes
    note: str = ""


# The Omost models (OMOST.md, "LLM chat").
OMOST_MODELS: dict[str, KnownModel] = {
    "lllyasviel/omost-llama-3-8b-4bits": KnownModel("4-bit", "recommended"),
    "lllyasviel/omost-llama-3-8b": KnownModel(None),
    "lllyasviel/omost-dolphin-2.9-llama3-8b-4bits": KnownModel(
        "4-bit", "trained on unfiltered data: it may write content you do not want"),
    "lllyasviel/omost-dolphin-2.9-llama3-8b": KnownModel(
        None, "trained on unfiltered data: it may write content you do not want"),
    "lllyasviel/omost-phi-3-mini-128k-8bits": KnownModel("8-bit"),
    "lllyasviel/omost-phi-3-mini-128k": KnownModel(None),
}
DEFAULT_MODEL = "lllyasviel/omost-llama-3-8b-4bits"

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


@dataclass(frozen=True)
class LocalModelSpec:
    """What to load. device/dtype None = automatic (CUDA + bfloat16/float16 when there is a GPU, else CPU +
    float32). trust_remote_code runs Python code shipped with the model repository: off unless asked for."""

    name_or_path: str
    device: str | None = None
    dtype: str | None = None
    trust_remote_code: bool = False
    local_files_only: bool = False

    def __post_init__(self):
        if not isinstance(self.name_or_path, str) or not self.name_or_path.strip():
            raise ValueError("the model name or path must be a non-empty string")
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be None (auto) or one of {sorted(_DTYPES)}, got {self.dtype!r}")

    def resolved_device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype is not None:
            return _DTYPES[self.dtype]
        if self.resolved_device().type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32


@dataclass
class LoadedModel:
    spec: LocalModelSpec
    model: object
    tokenizer: object
    quantization: str | None
    # one generate() at a time on a model; offload waits for it (stop the chat first to free VRAM at once)
    busy: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _jobs: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, repr=False)
    _worker: threading.Thread | None = field(default=None, repr=False)
    _worker_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def run_in_worker(self, job) -> None:
        """Run `job` on this model's one long-lived generation thread. CUDA libraries keep per-thread state
        (handles, attention plan caches) that a fresh thread per chat rebuilds on every call: on an H100 a
        tiny model generated 18x slower in a new thread than in a reused one."""
        with self._worker_lock:
            if self._worker is None:
                self._worker = threading.Thread(target=_serve, args=(self._jobs,), name="omost-llm-generate",
                                                daemon=True)
                self._worker.start()
        self._jobs.put(job)

    def stop_worker(self) -> None:
        """The generation thread ends after its current job (called on unload)."""
        self._jobs.put(None)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def context_length(self) -> int | None:
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if value else None


def _serve(jobs: queue.SimpleQueue) -> None:
    while (job := jobs.get()) is not None:
        job()


# ---- quantisation support ------------------------------------------------------------------------

def _import_problem(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # bitsandbytes fails with OSError/RuntimeError on unsupported machines
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"{module} cannot be imported ({first_line})"
    return None


def quantization_problem() -> str | None:
    """Why 4-bit/8-bit (bitsandbytes) models cannot run here, or None when they can."""
    problems = []
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is available")
    problems += [p for p in (_import_problem("bitsandbytes"), _import_problem("accelerate")) if p]
    return "; ".join(problems) or None


def _quantization_of(config) -> str | None:
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        return None
    quant = quant if isinstance(quant, dict) else quant.to_dict()
    if quant.get("load_in_4bit") or quant.get("bnb_4bit_quant_type"):
        return "4-bit"
    if quant.get("load_in_8bit"):
        return "8-bit"
    return str(quant.get("quant_method", "quantised"))


def check_quantization(name: str, quantization: str | None) -> None:
    if quantization is None:
        return
    problem = quantization_problem()
    if problem:
        raise LLMError(f"model {name!r} is {quantization} quantised and needs bitsandbytes and a CUDA GPU: "
                       f"{problem}. Use a non-quantised model (e.g. lllyasviel/omost-llama-3-8b) or an "
                       f"OpenAI-compatible server instead.")


# ---- loading and the cache -------------------------------------------------------------------------

_cache_lock = threading.Lock()
_cached: LoadedModel | None = None  # the one explicit cache (ARCHITECTURE.md, boundary 5)


def _load(spec: LocalModelSpec) -> LoadedModel:
    known = OMOST_MODELS.get(spec.name_or_path)
    if known is not None:  # fail before any download
        check_quantization(spec.name_or_path, known.quantization)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    common = dict(trust_remote_code=spec.trust_remote_code, local_files_only=spec.local_files_only)
    name = spec.name_or_path
    try:
        config = AutoConfig.from_pretrained(name, **common)
        quantization = _quantization_of(config)
        check_quantization(name, quantization)
        tokenizer = AutoTokenizer.from_pretrained(name, **common)
        if not getattr(tokenizer, "chat_template", None):
            raise LLMError(f"model {name!r} has no chat template in its tokenizer; an instruction (chat) "
                           f"model is needed")
        device, dtype = spec.resolved_device(), spec.resolved_dtype()
        kwargs = dict(config=config, torch_dtype=dtype, **common)
        if quantization is not None:
            kwargs["device_map"] = {"": device.index or 0}
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not spec.trust_remote_code:
            raise LLMError(f"model {name!r} ships its own Python code and loading it needs trust_remote_code, "
                           f"which runs that code on this machine: turn it on only for a repository you "
                           f"trust") from exc
        raise LLMError(f"cannot load model {name!r}: {exc}") from exc
    except OSError as exc:
        where = "a local folder" if os.path.isdir(name) else "a Hugging Face model name or local folder"
        raise LLMError(f"cannot load model {name!r} ({where}): {exc}") from exc
    if quantization is None:
        model.to(device)
    model.eval()
    return LoadedModel(spec, model, tokenizer, quantization)


def load_model(spec: LocalModelSpec) -> LoadedModel:
    """The loaded model for `spec`, from the cache when it is there (one model is kept; another is unloaded)."""
    global _cached
    with _cache_lock:
        if _cached is not None and _cached.spec == spec:
            if _cached.quantization is None and not _same_device(_cached.model.device, spec.resolved_device()):
                with _cached.busy:
                    _cached.model.to(spec.resolved_device())  # back from offload_model()
            return _cached
        _unload_locked()
        _cached = _load(spec)
        return _cached


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def cached_model() -> LoadedModel | None:
    return _cached


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _unload_locked() -> bool:
    global _cached
    if _cached is None:
        return False
    _cached.stop_worker()
    _cached = None
    _free_memory()
    return True


def unload_model() -> bool:
    """Drop the cached model and free its memory (VRAM included). True when one was loaded."""
    with _cache_lock:
        return _unload_locked()


def offload_model() -> bool:
    """Free VRAM for diffusion: move the cached model to the CPU (quantised models cannot move: unloaded).
    The next chat moves it back. True when a model was moved or unloaded."""
    with _cache_lock:
        if _cached is None:
            return False
        if _cached.quantization is not None:
            return _unload_locked()
        with _cached.busy:
            _cached.model.to("cpu")
        _free_memory()
        return True


# ---- streaming ----------------------------------------------------------------------------------------

class IncrementalDecoder:
    """Token ids → text deltas with bounded work per step.

    Decoding a window of recent tokens with and without the newest ones and taking the difference keeps the
    spacing that depends on the previous token, and text that ends inside a multi-byte character ("\\ufffd")
    waits for the next token. Concatenated deltas equal decoding all tokens at once.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # a fast tokenizer's Rust backend decodes the same text as tokenizer.decode(..., clean_up=False)
        # without its Python layers (about 30x faster on short windows)
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.ids: list[int] = []
        self.prefix = 0  # start of the context window
        self.read = 0  # tokens up to here were emitted

    def _decode(self, ids: list[int]) -> str:
        if self.backend is not None:
            return self.backend.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        return self._delta(final=False)

    def flush(self) -> str:
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        if self.read == len(self.ids):
            return ""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]


class _QueueStreamer:
    """transformers streamer interface (put/end): new token ids go to a queue; the first put (the prompt)
    is skipped."""

    def __init__(self, sink: queue.SimpleQueue):
        self.sink = sink
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.sink.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


_END = object()
# Text events at most every 20 ms (50 per second is plenty for a UI): fewer wake-ups of the consumer thread,
# so less competition with generate() for the GIL.
STREAM_INTERVAL = 0.02


def _stopping_criteria(flags: tuple[threading.Event, ...]):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class EventStop(StoppingCriteria):
        """Stops generate() at the next step once any flag is set (the user's stop, or the consumer left)."""

        answers: dict = {}  # (stop, batch, device) -> bool tensor; generate() never writes into it

        def __call__(self, input_ids, scores, **kwargs):
            key = (any(flag.is_set() for flag in flags), input_ids.shape[0], input_ids.device)
            if key not in self.answers:
                self.answers[key] = torch.full(key[1:2], key[0], dtype=torch.bool, device=key[2])
            return self.answers[key]

    return StoppingCriteriaList([EventStop()])


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return set(ids)


def generate_kwargs(loaded: LoadedModel, input_ids: torch.Tensor, settings: GenerationSettings,
                    prompt_lookup: bool) -> dict:
    """The model.generate() arguments for these settings (the bench calls generate with the same ones)."""
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                  max_new_tokens=settings.max_new_tokens, pad_token_id=pad)
    if settings.greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None)
    else:
        kwargs.update(do_sample=True, temperature=float(settings.temperature), top_p=float(settings.top_p))
    if prompt_lookup:
        kwargs["prompt_lookup_num_tokens"] = settings.prompt_lookup_tokens
    return kwargs


def prompt_ids(loaded: LoadedModel, messages: list[dict]) -> torch.Tensor:
    """The prompt through the model's own chat template, ending with the assistant's turn header."""
    ids = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    return ids.to(loaded.device)


class LocalBackend:
    """Chat with a local transformers model (see events.Backend)."""

    def __init__(self, spec: LocalModelSpec | str):
        self.spec = spec if isinstance(spec, LocalModelSpec) else LocalModelSpec(spec)

    def describe(self) -> str:
        return f"local model {self.spec.name_or_path}"

    def load(self) -> LoadedModel:
        return load_model(self.spec)

    def count_tokens(self, messages: list[dict]) -> tuple[int, bool]:
        return int(prompt_ids(self.load(), messages).shape[-1]), True

    def context_length(self) -> int | None:
        return self.load().context_length

    def stream(self, messages: list[dict], settings: GenerationSettings,
               stop: threading.Event) -> Iterator[TextDelta | Finished]:
        loaded = self.load()
        input_ids = prompt_ids(loaded, messages)
        has_previous = any(m["role"] == "assistant" for m in messages)
        kwargs = generate_kwargs(loaded, input_ids, settings, settings.use_prompt_lookup(has_previous))
        sink: queue.SimpleQueue = queue.SimpleQueue()
        left = threading.Event()  # the consumer is gone or has all it needs
        kwargs.update(streamer=_QueueStreamer(sink), stopping_criteria=_stopping_criteria((stop, left)))
        done = threading.Event()
        job = functools.partial(_generate, loaded, kwargs, settings.seed, sink, done)
        yield from _consume(loaded, settings, stop, left, sink, job, done)


def _generate(loaded: LoadedModel, kwargs: dict, seed: int | None, sink: queue.SimpleQueue,
              done: threading.Event) -> None:
    model = loaded.model
    try:
        # fork_rng: seeding must not disturb the random state the WebUI's own sampling uses
        devices = [model.device] if model.device.type == "cuda" else []
        with loaded.busy, torch.random.fork_rng(devices=devices), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            model.generate(**kwargs)
    except BaseException as exc:  # handed to the consumer, which raises it as an LLMError
        sink.put(exc)
    finally:
        sink.put(_END)
        done.set()


def _consume(loaded: LoadedModel, settings: GenerationSettings, stop: threading.Event, left: threading.Event,
             sink: queue.SimpleQueue, job, done: threading.Event) -> Iterator[TextDelta | Finished]:
    eos = _eos_ids(loaded.model, loaded.tokenizer)
    decoder = IncrementalDecoder(loaded.tokenizer)
    count, reason = 0, None
    start = time.perf_counter()
    loaded.run_in_worker(job)
    try:
        running, next_batch = True, start
        while running and reason is None:
            wait = next_batch - time.perf_counter()
            if wait > 0:
                done.wait(wait)
            batch = [sink.get()]
            while True:  # take everything that is ready: one decode per batch, not per token
                try:
                    batch.append(sink.get_nowait())
                except queue.Empty:
                    break
            new: list[int] = []
            for item in batch:
                if item is _END:
                    running = False
                    break
                if isinstance(item, BaseException):
                    raise _generation_error(item) from item
                for token in item:
                    # prompt-lookup decoding can overshoot max_new_tokens and run past an end token: cut
                    if count >= settings.max_new_tokens:
                        reason = "length"
                        break
                    count += 1
                    if token in eos:
                        reason = "stop"
                        break
                    new.append(token)
                if reason is not None:
                    break
            text = decoder.push(new)
            if text:
                yield TextDelta(text, count)
            if stop.is_set() and reason is None:
                reason = "stopped"
            next_batch = time.perf_counter() + STREAM_INTERVAL
        tail = decoder.flush()
        if tail:
            yield TextDelta(tail, count)
        if reason is None:
            reason = "length" if count >= settings.max_new_tokens else "stop"
        yield Finished(reason, "", count, time.perf_counter() - start)
    finally:
        left.set()
        done.wait()


def _generation_error(exc: BaseException) -> LLMError:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return LLMError("the GPU ran out of memory while generating: use a 4-bit model, a shorter "
                        "conversation (undo or clear), or an OpenAI-compatible server")
    return LLMError(f"generation failed: {type(exc).__name__}: {exc}")
