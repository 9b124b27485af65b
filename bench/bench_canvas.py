"""Canvas parser speed on the 7 kB dragon sample (tests/data/dragon_battle.response.md).

- full parse: parse_answer(answer) vs ast.parse of the same code (the syntax tree alone, no checks);
- streaming: the answer fed to IncrementalParser in 2,000 chunks (feed each, then finish) vs one
  parse_answer of the whole answer. Quadratic re-parsing would cost ~1,000 full parses here.
Context: the same streaming ratio for an answer 10x longer in 20,000 chunks (linear work keeps it flat).
Every round runs each case back to back; ratios are medians of the per-round ratios.

    python bench/bench_canvas.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lib_omost.canvas import IncrementalParser, parse_answer  # noqa: E402

SAMPLE = os.path.join(ROOT, "tests", "data", "dragon_battle.response.md")


def chunks_of(text: str, n: int) -> list[str]:
    bounds = [round(i * len(text) / n) for i in range(n + 1)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def stream(chunks: list[str]):
    parser = IncrementalParser()
    for chunk in chunks:
        parser.feed(chunk)
    return parser.finish()


def seconds(fn, loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - start) / loops


def longer_answer(text: str, times: int) -> str:
    """The sample with its local calls repeated: ``times`` x as long, still a valid answer."""
    head, rest = text.split("\n# Add ", 1)
    body = "\n# Add " + rest.rsplit("```", 1)[0]
    return head + body * times + "```"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    answer = open(SAMPLE, encoding="utf-8").read()
    code = answer.split("```python\n", 1)[1].rsplit("```", 1)[0]
    chunks = chunks_of(answer, 2000)
    big = longer_answer(answer, 10)
    big_chunks = chunks_of(big, 20000)
    assert stream(chunks).canvas == parse_answer(answer).canvas
    assert len(parse_answer(big).canvas.regions) == 40

    rounds = {"full_vs_ast": [], "stream_vs_full": [], "big_stream_vs_full": []}
    times = {"ast": [], "full": [], "stream": [], "big_full": [], "big_stream": []}
    for _ in range(args.repeats):
        t_ast = seconds(lambda: ast.parse(code), 40)
        t_full = seconds(lambda: parse_answer(answer), 40)
        t_stream = seconds(lambda: stream(chunks), 2)
        t_big_full = seconds(lambda: parse_answer(big), 4)
        t_big_stream = seconds(lambda: stream(big_chunks), 1)
        for key, value in (("ast", t_ast), ("full", t_full), ("stream", t_stream), ("big_full", t_big_full),
                           ("big_stream", t_big_stream)):
            times[key].append(value)
        rounds["full_vs_ast"].append(t_full / t_ast)
        rounds["stream_vs_full"].append(t_stream / t_full)
        rounds["big_stream_vs_full"].append(t_big_stream / t_big_full)

    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"context answer={len(answer)} chars, code={len(code)} chars, chunks={len(chunks)}, "
          f"repeats={args.repeats}")
    print(f"context ast.parse {ms['ast']:.3f} ms, parse_answer {ms['full']:.3f} ms, "
          f"streamed in 2000 chunks {ms['stream']:.3f} ms ({ms['stream'] / len(chunks) * 1e3:.2f} us per feed)")
    print(f"context 10x answer ({len(big)} chars): parse_answer {ms['big_full']:.3f} ms, streamed in "
          f"{len(big_chunks)} chunks {ms['big_stream']:.3f} ms, ratio "
          f"{statistics.median(rounds['big_stream_vs_full']):.2f} (stays flat when the work is linear)")
    print(f"RATIO full_parse_vs_ast_parse {statistics.median(rounds['full_vs_ast']):.2f} target <= 3")
    print(f"RATIO stream_2000_chunks_vs_full_parse {statistics.median(rounds['stream_vs_full']):.2f} target <= 20")


if __name__ == "__main__":
    main()
