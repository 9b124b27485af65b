"""Write a tiny random-weight Llama model as a GGUF file that llama.cpp's servers load (no download).

    python tests/llm_server/write_tiny_gguf.py OUT.gguf [--context 4096] [--seed 0]

Needs numpy, gguf and tokenizers (build_llama_server.sh installs them in its venv). The tokenizer is a
byte-level BPE (GPT-2 style: every byte is a token, so any text can be encoded) trained here on this
repository's README and the sample Omost answer, with ChatML special tokens and a ChatML chat template. The
weights are random: the model writes nonsense, which is all a protocol test needs.

Two kinds of token are never generated: the special tokens (so an answer never ends by itself: it runs to
max_tokens or until the client stops it) and the byte-level tokens that are not whole UTF-8 text (a random
model would emit them, and llama-cpp-python's server slows to a crawl on undecodable output; no real model
writes such bytes). How: embedding dimension 0 is a constant the layers never write to, so after the final
norm it is a positive number for every position; those tokens' output rows are -10 on that dimension and 0
elsewhere, which puts their logits some 50 below the others.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                 "+ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{% endif %}")
# dimensions: small enough to load instantly, large enough to be a real multi-head, grouped-query Llama
VOCAB, EMBED, LAYERS, HEADS, KV_HEADS, FFN = 1024, 64, 2, 4, 2, 176
MODEL_NAME = "omost-tiny-random"
ANCHOR = 8.0  # the constant of embedding dimension 0


def train_tokenizer(vocab_size: int):
    """A byte-level BPE trained on the repository's own text: (tokens, token types, merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [(ROOT / "README.md").read_text(encoding="utf-8"),
              (ROOT / "tests" / "data" / "dragon_battle.response.md").read_text(encoding="utf-8")]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # the GPT-2 split regex
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    vocab = tokenizer.get_vocab()
    tokens = [None] * len(vocab)
    for piece, index in vocab.items():
        tokens[index] = piece
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    types = [3 if t in SPECIAL else 1 for t in tokens]  # gguf TokenType: CONTROL = 3, NORMAL = 1
    return tokens, types, merges


def byte_level_bytes(token: str) -> bytes:
    """The bytes a GPT-2 byte-level token stands for (each byte is written as one printable character)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable + [256 + i for i in range(256 - len(printable))]
    codes = printable + [b for b in range(256) if b not in printable]
    decoder = {chr(c): b for c, b in zip(chars, codes)}
    return bytes(decoder[ch] for ch in token)


def never_generated(tokens: list[str]) -> list[int]:
    banned = []
    for index, token in enumerate(tokens):
        if token in SPECIAL:
            banned.append(index)
            continue
        try:
            byte_level_bytes(token).decode("utf-8")
        except UnicodeDecodeError:
            banned.append(index)
    return banned


def write(path: Path, context: int, seed: int) -> None:
    import gguf

    tokens, types, merges = train_tokenizer(VOCAB)
    vocab = len(tokens)
    eos = tokens.index("<|im_end|>")
    head_dim = EMBED // HEADS
    rng = np.random.default_rng(seed)

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def without_row_0(weight):  # a layer's output never changes the residual's dimension 0
        weight[0] = 0.0
        return weight

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(MODEL_NAME)
    writer.add_context_length(context)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    # numpy shapes are (rows, columns) = GGUF's (ne[1], ne[0]): a weight maps columns -> rows
    embedding = normal(vocab, EMBED, std=1.0)
    embedding[:, 0] = ANCHOR  # dimension 0: the same constant for every token; no layer writes to it
    writer.add_tensor("token_embd.weight", embedding)
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(EMBED, np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", normal(HEADS * head_dim, EMBED, std=0.2))
        writer.add_tensor(f"blk.{i}.attn_k.weight", normal(KV_HEADS * head_dim, EMBED, std=0.2))
        writer.add_tensor(f"blk.{i}.attn_v.weight", normal(KV_HEADS * head_dim, EMBED, std=0.2))
        writer.add_tensor(f"blk.{i}.attn_output.weight", without_row_0(normal(EMBED, HEADS * head_dim, std=0.2)))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(EMBED, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", normal(FFN, EMBED, std=0.2))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", normal(FFN, EMBED, std=0.2))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", without_row_0(normal(EMBED, FFN, std=0.2)))
    writer.add_tensor("output_norm.weight", np.ones(EMBED, np.float32))
    output = normal(vocab, EMBED, std=0.4)  # logits ~ N(0, 0.4² · 63): a spread distribution over tokens
    output[:, 0] = 0.0
    banned = never_generated(tokens)
    output[banned] = 0.0
    output[banned, 0] = -10.0  # x (a positive dimension 0 after the norm): far below every other logit
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the .gguf file to write")
    parser.add_argument("--context", type=int, default=4096, help="the model's trained context (default 4096)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = parser.parse_args()
    write(args.out, args.context, args.seed)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB, {MODEL_NAME})")


if __name__ == "__main__":
    main()
