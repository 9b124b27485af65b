"""LLM chat overheads: local streaming vs plain generate, and the SSE client vs reading the raw bytes.

1. Local backend: the tiny random Llama of the tests (2 layers, hidden 32), greedy, the same settings both
   ways; throughput of `LocalBackend.stream` (generate in a worker thread, tokens through a queue, incremental
   detokenisation, TextDelta events) vs a plain `model.generate` call. Ratio = plain time / streaming time.
   A context line shows prompt-lookup decoding on a multi-round prompt against plain greedy.
2. OpenAI-compatible client: a loopback server in a separate process (as a real LLM server is) writes a
   4,000-event chat-completion stream, one event per HTTP chunk, as fast as it can. The time to the end of
   the stream with our client (SSE decoding, JSON per event, TextDelta events) vs the same request whose
   body bytes are only read. Ratio = ours / raw. Context lines give the client's CPU time per event.

Each round runs both sides back to back; ratios are medians of the per-round ratios.

    python bench/bench_llm.py [--device cuda] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lib_omost.llm.events import GenerationSettings, TextDelta  # noqa: E402
from lib_omost.llm.local import LocalBackend, LocalModelSpec, generate_kwargs, prompt_ids  # noqa: E402
from lib_omost.llm.openai_compat import EndpointConfig, OpenAIBackend  # noqa: E402

SSE_EVENTS = 4000
MESSAGES = [{"role": "system", "content": "You compose images."},
            {"role": "user", "content": "a dragon over a castle"}]


def median_ratio(pairs):
    return statistics.median(a / b for a, b in pairs)


# ---- 1. local streaming ---------------------------------------------------------------------------

def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def bench_local(device, repeats, max_new_tokens):
    from tests.test_llm_local import build_model_dir  # the tests' tiny model recipe

    with tempfile.TemporaryDirectory() as folder:
        build_model_dir(folder)
        backend = LocalBackend(LocalModelSpec(folder, device=str(device)))
        loaded = backend.load()
        settings = GenerationSettings(temperature=0, max_new_tokens=max_new_tokens, prompt_lookup=False)
        ids = prompt_ids(loaded, MESSAGES)
        plain_kwargs = generate_kwargs(loaded, ids, settings, prompt_lookup=False)

        def plain():
            with torch.inference_mode():
                return loaded.model.generate(**plain_kwargs).shape[-1] - ids.shape[-1]

        def streamed(messages=MESSAGES, s=settings):
            return list(backend.stream(messages, s, threading.Event()))[-1].tokens

        for _ in range(2):  # warm-up
            plain(), streamed()
        pairs = []
        for _ in range(repeats):
            t_plain, n_plain = timed(plain, device)
            t_stream, n_stream = timed(streamed, device)
            assert n_plain == n_stream == max_new_tokens, (n_plain, n_stream)
            pairs.append((t_plain, t_stream))
        plain_s = statistics.median(p for p, _ in pairs)
        stream_s = statistics.median(s for _, s in pairs)
        print(f"local tiny Llama on {device}: {max_new_tokens} tokens greedy; plain generate "
              f"{max_new_tokens / plain_s:.0f} tokens/s, streaming {max_new_tokens / stream_s:.0f} tokens/s")
        print(f"RATIO local_stream_throughput_vs_generate {median_ratio(pairs):.3f} target >= 0.9")

        # prompt lookup on a multi-round edit (the previous answer is in the prompt)
        previous = "".join(e.text for e in list(backend.stream(MESSAGES, settings, threading.Event()))[:-1])
        edit = MESSAGES + [{"role": "assistant", "content": previous},
                           {"role": "user", "content": "a dragon over a castle"}]
        lookup = GenerationSettings(temperature=0, max_new_tokens=max_new_tokens, prompt_lookup=True)
        lookup_pairs = []
        for _ in range(repeats):
            t_off, _ = timed(lambda: streamed(edit, settings), device)
            t_on, _ = timed(lambda: streamed(edit, lookup), device)
            lookup_pairs.append((t_off, t_on))
        print(f"context: prompt-lookup decoding on a multi-round prompt (random weights, greedy): "
              f"{median_ratio(lookup_pairs):.2f}x the speed of plain greedy streaming")


# ---- 2. SSE client ---------------------------------------------------------------------------------

def sse_body(events: int) -> list[bytes]:
    parts = []
    for i in range(events):
        chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
                 "model": "bench-model", "system_fingerprint": "fp_bench",
                 "choices": [{"index": 0, "delta": {"content": f" tok{i % 97}"}, "logprobs": None,
                              "finish_reason": None}]}
        parts.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    final = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
             "model": "bench-model", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    parts.append(b"data: " + json.dumps(final).encode() + b"\n\n")
    parts.append(b"data: [DONE]\n\n")
    return parts


def serve(events: int) -> None:
    """The loopback server (run in its own process): prints its port, then serves until killed."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    parts = [b"%x\r\n%s\r\n" % (len(p), p) for p in sse_body(events)]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in parts:  # one event per chunk, each sent at once, like a token stream
                self.wfile.write(part)
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


def bench_sse(repeats):
    server = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(SSE_EVENTS)],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        backend = OpenAIBackend(EndpointConfig(f"http://127.0.0.1:{port}", model="bench-model"))
        settings = GenerationSettings()
        expected = "".join(f" tok{i % 97}" for i in range(SSE_EVENTS))

        def ours():
            return list(backend.stream(MESSAGES, settings, threading.Event()))

        def check(events):
            assert "".join(e.text for e in events if isinstance(e, TextDelta)) == expected
            assert events[-1].reason == "stop" and len(events) == SSE_EVENTS + 1

        def raw():
            body = backend.request_body(MESSAGES, settings)
            size = 0
            with backend.client().stream("POST", backend.config.root + "/chat/completions", json=body) as response:
                for chunk in response.iter_bytes():
                    size += len(chunk)
            return size

        def clocked(fn):
            wall, cpu = time.perf_counter(), time.process_time()
            result = fn()
            return time.perf_counter() - wall, time.process_time() - cpu, result

        for _ in range(2):
            check(ours()), raw()
        pairs, cpu = [], {"ours": [], "raw": []}
        for _ in range(repeats):
            t_raw, c_raw, size = clocked(raw)
            t_ours, c_ours, events = clocked(ours)
            check(events)
            pairs.append((t_ours, t_raw))
            cpu["ours"].append(c_ours)
            cpu["raw"].append(c_raw)
        print(f"SSE stream: {SSE_EVENTS} events, {size / 1e6:.2f} MB; to the end of the stream: raw bytes "
              f"{statistics.median(p[1] for p in pairs) * 1e3:.1f} ms, our client "
              f"{statistics.median(p[0] for p in pairs) * 1e3:.1f} ms")
        per_event = {k: statistics.median(v) / SSE_EVENTS * 1e6 for k, v in cpu.items()}
        print(f"context: client CPU per event: raw read {per_event['raw']:.1f} us, our client "
              f"{per_event['ours']:.1f} us (the server in its own process sets the pace)")
        print(f"RATIO sse_client_vs_raw_bytes {median_ratio(pairs):.3f} target <= 1.10")
    finally:
        server.terminate()
        server.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--serve", type=int, metavar="EVENTS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    torch.set_num_threads(args.threads)
    bench_local(torch.device(args.device), args.repeats, args.max_new_tokens)
    bench_sse(max(args.repeats, 9))


if __name__ == "__main__":
    main()
