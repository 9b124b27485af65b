# A deterministic toy CLIP with the real prompt machinery around it.
# Mirrors the behaviour (not the weights) of
#   Forge main  backend/text_processing/classic_engine.py ClassicTextProcessingEngine,
#               backend/text_processing/parsing.py parse_prompt_attention,
#               backend/text_processing/emphasis.py EmphasisOriginal                   @ dfdcbab6
#   reForge     modules/sd_hijack_clip.py, modules/prompt_parser.py (same chunking)    @ 3b56b268
# Reproduced: emphasis syntax ( ) [ ] (x:w) and backslash escapes; BREAK forces a new chunk; chunks of
# 75 tokens framed by BOS/EOS (77 per chunk) padded with EOS; a comma within the last 20 tokens of a full
# chunk moves the words after it to the next chunk; prompts of a batch padded with empty chunks to the
# same chunk count; output [B, 77*k, width] (hstack of chunks); Original emphasis (multiply, restore mean);
# pooled output from the first chunk; tokens after the first EOS set to the pad id when pad != EOS.
# The tokenizer is word-level (lower-cased words and single punctuation marks, ids from crc32) and the
# encoder a tiny seeded network with transformers' CLIPTextModel layer names (what text-encoder LoRA keys
# name), so prompts map to stable, distinct embeddings without any download.
import re
import zlib

import torch
from torch import nn

CHUNK_LENGTH = 75

_attention_token = re.compile(r"""
    \\[()\[\]\\] | \\             # escapes (a lone backslash is kept as text)
  | \( | \[                       # openers
  | :\s*([+-]?[.\d]+)\s*\)        # (text:weight) closer
  | \) | ]                        # plain closers
  | [^\\()\[\]:]+ | :             # text
""", re.X)
_break = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text):
    """[[text, weight], ...] with BREAK as ["BREAK", -1]; runs of equal weight merged."""
    res, round_open, square_open = [], [], []

    def scale_from(start, factor):
        for item in res[start:]:
            item[1] *= factor

    for match in _attention_token.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            scale_from(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale_from(round_open.pop(), 1.1)
        elif token == "]" and square_open:
            scale_from(square_open.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(_break.split(token)):
                if i:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for start in round_open:
        scale_from(start, 1.1)
    for start in square_open:
        scale_from(start, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res.pop(i + 1)[0]
        else:
            i += 1
    return res


class ToyTokenizer:
    """Word-level stand-in for CLIPTokenizer (call signature and special-token attributes kept)."""

    _word = re.compile(r"[a-z0-9_]+|[^\sa-z0-9_]")

    def __init__(self, vocab_size=4096, pad_token_id=None):
        self.vocab_size = vocab_size
        self.bos_token_id = vocab_size - 2
        self.eos_token_id = vocab_size - 1
        self.pad_token_id = self.eos_token_id if pad_token_id is None else pad_token_id

    def token_id(self, word):
        return 1 + zlib.crc32(word.encode("utf8")) % (self.vocab_size - 3)

    def words(self, text):
        return self._word.findall(text.lower())

    def __call__(self, texts, truncation=False, add_special_tokens=False):
        single = isinstance(texts, str)
        ids = [[self.token_id(w) for w in self.words(t)] for t in ([texts] if single else texts)]
        if add_special_tokens:
            ids = [[self.bos_token_id] + x + [self.eos_token_id] for x in ids]
        return {"input_ids": ids[0] if single else ids}

    def get_vocab(self):
        return {",</w>": self.token_id(",")}


class ModuleLinear(nn.Module):
    """A Linear layer that is not a ``torch.nn.Linear``: Forge main's text encoder is built with its
    ``ForgeOperations.Linear``, a plain ``nn.Module`` holding ``weight`` / ``bias`` (reForge's is a subclass of
    ``nn.Linear``); code that looks for Linear layers must accept both."""

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight, self.bias)


class ToyAttention(nn.Module):
    """Uniform causal attention (each token the mean of the tokens up to it) and CLIPAttention's value
    projection ``v_proj``, the Linear a text-encoder LoRA's self_attn_v_proj key targets."""

    def __init__(self, value):
        super().__init__()
        # the Linear computes x @ weight.T; a transposed view keeps x @ value's exact float32 rounding
        self.v_proj = ModuleLinear(value.t())

    def forward(self, h):
        steps = torch.arange(1, h.shape[1] + 1, dtype=h.dtype)[None, :, None]
        return self.v_proj(h.cumsum(dim=1) / steps)


class ToyEncoderLayer(nn.Module):
    """A CLIPEncoderLayer's residual step and sub-module path (self_attn.v_proj), with a bounded update."""

    def __init__(self, value):
        super().__init__()
        self.self_attn = ToyAttention(value)

    def forward(self, h):
        return h + torch.tanh(self.self_attn(h))


class ToyTextEncoder(nn.Module):
    """Embeddings + two causal mixing layers at transformers' CLIPTextModel paths
    (text_model.encoder.layers.N.self_attn.v_proj); hidden_states like transformers' output_hidden_states."""

    def __init__(self, vocab_size, width, seed, projection_dim=None):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.token_embedding = nn.Parameter(torch.randn(vocab_size, width, generator=generator) * 0.5)
        self.position_embedding = nn.Parameter(torch.randn(CHUNK_LENGTH + 2, width, generator=generator) * 0.1)
        self.text_model = nn.Module()
        self.text_model.encoder = nn.Module()
        self.text_model.encoder.layers = nn.ModuleList([
            ToyEncoderLayer(torch.randn(width, width, generator=generator) / width ** 0.5) for _ in range(2)])
        self.final_layer_norm = nn.LayerNorm(width)
        with torch.no_grad():   # a non-zero mean, as real CLIP states have (emphasis rescales by the mean)
            self.final_layer_norm.weight.copy_(1.0 + 0.1 * torch.randn(width, generator=generator))
            self.final_layer_norm.bias.copy_(0.5 + 0.1 * torch.randn(width, generator=generator))
        self.text_projection = (nn.Parameter(torch.randn(width, projection_dim, generator=generator) / width ** 0.5)
                                if projection_dim else None)
        self.eos_token_id = vocab_size - 1

    def forward(self, tokens):
        h = self.token_embedding[tokens] + self.position_embedding[: tokens.shape[1]]
        hidden_states = [h]
        for layer in self.text_model.encoder.layers:
            h = layer(h)
            hidden_states.append(h)
        first_eos = (tokens == self.eos_token_id).int().argmax(dim=1)
        pooled = self.final_layer_norm(h)[torch.arange(h.shape[0]), first_eos]
        return hidden_states, pooled


class PromptChunk:
    def __init__(self):
        self.tokens, self.multipliers = [], []


class TextProcessingEngine:
    """Same public methods as ClassicTextProcessingEngine: tokenize, tokenize_line, process_texts, __call__."""

    def __init__(self, tokenizer, encoder, clip_skip=1, minimal_clip_skip=1, final_layer_norm=True,
                 return_pooled=False, chunk_length=CHUNK_LENGTH):
        self.tokenizer, self.text_encoder = tokenizer, encoder
        self.chunk_length = chunk_length
        self.clip_skip, self.minimal_clip_skip = clip_skip, minimal_clip_skip
        self.final_layer_norm, self.return_pooled = final_layer_norm, return_pooled
        self.id_start, self.id_end, self.id_pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        self.comma_token = tokenizer.get_vocab().get(",</w>")

    def empty_chunk(self):
        chunk = PromptChunk()
        chunk.tokens = [self.id_start] + [self.id_end] * (self.chunk_length + 1)
        chunk.multipliers = [1.0] * (self.chunk_length + 2)
        return chunk

    def get_target_prompt_token_count(self, token_count):
        return -(-max(token_count, 1) // self.chunk_length) * self.chunk_length

    def tokenize(self, texts):
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def tokenize_line(self, line):
        parsed = parse_prompt_attention(line)
        tokenized = self.tokenize([text for text, _ in parsed])
        chunks, chunk = [], PromptChunk()
        token_count, last_comma = 0, -1

        def close_chunk(is_last=False):
            nonlocal chunk, token_count, last_comma
            token_count += len(chunk.tokens) if is_last else self.chunk_length
            missing = self.chunk_length - len(chunk.tokens)
            chunk.tokens = [self.id_start] + chunk.tokens + [self.id_end] * max(missing, 0) + [self.id_end]
            chunk.multipliers = [1.0] + chunk.multipliers + [1.0] * max(missing, 0) + [1.0]
            chunks.append(chunk)
            chunk, last_comma = PromptChunk(), -1

        for tokens, (text, weight) in zip(tokenized, parsed):
            if text == "BREAK" and weight == -1:
                close_chunk()
                continue
            for token in tokens:
                if token == self.comma_token:
                    last_comma = len(chunk.tokens)
                elif (len(chunk.tokens) == self.chunk_length and last_comma != -1
                      and len(chunk.tokens) - last_comma <= 20):
                    moved_tokens = chunk.tokens[last_comma + 1:]
                    moved_mults = chunk.multipliers[last_comma + 1:]
                    chunk.tokens, chunk.multipliers = chunk.tokens[:last_comma + 1], chunk.multipliers[:last_comma + 1]
                    close_chunk()
                    chunk.tokens, chunk.multipliers = moved_tokens, moved_mults
                if len(chunk.tokens) == self.chunk_length:
                    close_chunk()
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
        if chunk.tokens or not chunks:
            close_chunk(is_last=True)
        return chunks, token_count

    def process_texts(self, texts):
        cache, batch_chunks, token_count = {}, [], 0
        for line in texts:
            if line not in cache:
                cache[line], count = self.tokenize_line(line)
                token_count = max(token_count, count)
            batch_chunks.append(cache[line])
        return batch_chunks, token_count

    def encode_with_transformers(self, tokens):
        hidden_states, pooled = self.text_encoder(tokens)
        z = hidden_states[-max(self.clip_skip, self.minimal_clip_skip)]
        if self.final_layer_norm:
            z = self.text_encoder.final_layer_norm(z)
        if self.return_pooled:
            projection = self.text_encoder.text_projection
            z.pooled = pooled @ projection if projection is not None else pooled
        return z

    def process_tokens(self, batch_tokens, batch_multipliers):
        tokens = torch.asarray(batch_tokens)
        if self.id_end != self.id_pad:
            for row, chunk_tokens in enumerate(batch_tokens):
                tokens[row, chunk_tokens.index(self.id_end) + 1:] = self.id_pad
        z = self.encode_with_transformers(tokens)
        pooled = getattr(z, "pooled", None)
        multipliers = torch.asarray(batch_multipliers).to(z)
        original_mean = z.mean()
        z = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
        z = z * (original_mean / z.mean())
        if pooled is not None:
            z.pooled = pooled
        return z

    @torch.no_grad()
    def __call__(self, texts):
        batch_chunks, _ = self.process_texts(texts)
        zs = []
        for i in range(max(len(x) for x in batch_chunks)):
            chunk_row = [chunks[i] if i < len(chunks) else self.empty_chunk() for chunks in batch_chunks]
            zs.append(self.process_tokens([c.tokens for c in chunk_row], [c.multipliers for c in chunk_row]))
        if self.return_pooled:
            return torch.hstack(zs), zs[0].pooled
        return torch.hstack(zs)
