"""A small decoder-only transformer and an associative-recall language with a ground truth.

The model follows the GPT-2 / nanoGPT layout: token + learned position embeddings, ``n_layer``
pre-LayerNorm blocks (multi-head causal self-attention, then an MLP, each inside a residual), a final
LayerNorm and a linear head tied to the token embedding. Attention is written out (no fused kernel) so
that the chapter can read its weights, mask its heads and cache its keys and values.

The data is **associative recall**: ``(k1,v1) (k2,v2) ... (kn,vn) ? kq``, ``n`` distinct keys each
stored with its value in one pair token, then a query marker and a query for one of the keys; the next
token is that key's value. The answer is determined by exactly one earlier token (the matching pair),
so a token attribution can be scored against a known ground truth.

This is a core module (model and data, like :mod:`course_lib.models` and :mod:`course_lib.data`):
it imports only core modules, and :mod:`course_lib.checkpoints` builds the shipped models from it.

Taught in: 08_transformer §1
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .data import Split
from .validation import check_int

__all__ = ["TinyGPT", "CausalSelfAttention", "Block", "KVCache", "recall", "recall_vocab", "answer_positions",
           "generate_logits"]


def recall_vocab(n_keys: int = 8, n_values: int = 8) -> dict:
    """Token ids of the recall language.

    A **pair token** ``k * V + v`` (``0 .. KV-1``) stands for "key k holds value v"; then come the
    ``V`` **value** tokens (the answers), the ``K`` **query** tokens ("which value does key k hold?")
    and the query marker ``?``.

    Examples
    --------
    >>> recall_vocab(4, 3)
    {'pairs': range(0, 12), 'values': range(12, 15), 'queries': range(15, 19), 'marker': 19, 'size': 20}
    """
    n_keys, n_values = check_int("n_keys", n_keys, 2), check_int("n_values", n_values, 2)
    kv = n_keys * n_values
    return {"pairs": range(kv), "values": range(kv, kv + n_values),
            "queries": range(kv + n_values, kv + n_values + n_keys), "marker": kv + n_values + n_keys,
            "size": kv + n_values + n_keys + 1}


def recall(n: int = 20000, n_pairs: int = 6, n_keys: int = 8, n_values: int = 8, seed: int = 0) -> Split:
    """Associative recall ``(k1,v1) (k2,v2) ... (kn,vn) ? kq`` split 60/20/20, with the ground-truth position.

    Each sequence draws ``n_pairs`` distinct keys (uniformly, without replacement), a value for each
    (uniformly, with replacement) and the queried pair ``q`` (uniformly). Each pair is **one** token
    (:func:`recall_vocab`), followed by the marker and the query token of key ``k_q``. ``X`` holds the
    ``T = n_pairs + 2`` tokens, ``y`` the value token of key ``k_q`` (the next token), and ``masks_*``
    (bool, ``(N, T)``) marks the one position that determines it: ``q``. A model that has not learned
    the task is right with probability ``1 / n_values``; an attribution that picks a pair position at
    random finds ``q`` with probability ``1 / n_pairs``.

    Parameters
    ----------
    n : int >= 10, default=20000
        Sequences in all (train / val / test = 60 / 20 / 20 %).
    n_pairs : int >= 2, default=6
    n_keys : int >= n_pairs, default=8
    n_values : int >= 2, default=8
    seed : int >= 0, default=0
        numpy ``default_rng`` seed: the same seed gives the same tensors.

    Returns
    -------
    Split
        ``X_*`` int64 ``(N, T)``, ``y_*`` int64 ``(N,)`` (value token ids), ``masks_*`` bool ``(N, T)``.

    Examples
    --------
    >>> s = recall(n=20, n_pairs=3, n_keys=4, n_values=3, seed=0)
    >>> tuple(s.X_train.shape), int(s.masks_train[0].sum())
    ((12, 5), 1)
    """
    n, n_pairs, seed = check_int("n", n, 10), check_int("n_pairs", n_pairs, 2), check_int("seed", seed, 0)
    vocab = recall_vocab(n_keys, n_values)
    if n_keys < n_pairs:
        raise ValueError(f"n_keys must be an int >= n_pairs = {n_pairs}, got {n_keys!r}")
    rng = np.random.default_rng(seed)
    keys = np.argsort(rng.random((n, n_keys)), axis=1)[:, :n_pairs]               # (N, n) distinct keys
    values = rng.integers(0, n_values, size=(n, n_pairs))                          # (N, n)
    q = rng.integers(0, n_pairs, size=n)                                           # (N,) queried pair
    rows = np.arange(n)
    X = np.empty((n, n_pairs + 2), dtype=np.int64)
    X[:, :n_pairs] = keys * n_values + values
    X[:, -2], X[:, -1] = vocab["marker"], vocab["queries"][0] + keys[rows, q]
    y = vocab["values"][0] + values[rows, q]
    masks = np.zeros(X.shape, dtype=bool)
    masks[rows, q] = True
    cut_val, cut_test = int(round(0.6 * n)), int(round(0.8 * n))
    parts = {"train": slice(0, cut_val), "val": slice(cut_val, cut_test), "test": slice(cut_test, n)}
    kwargs = {}
    for name, idx in parts.items():
        kwargs[f"X_{name}"] = torch.as_tensor(X[idx])
        kwargs[f"y_{name}"] = torch.as_tensor(y[idx])
        kwargs[f"masks_{name}"] = torch.as_tensor(masks[idx])
    return Split(**kwargs, classes=[f"v{j}" for j in range(n_values)],
                 description=f"associative recall, {n_pairs} pairs of {n_keys} keys x {n_values} values, seed {seed}")


def answer_positions(masks: Tensor) -> Tensor:
    """``(N,)`` position of the pair that determines the answer, from a ground-truth mask ``(N, T)``."""
    return masks.long().argmax(dim=1)


class KVCache:
    """Keys and values of every layer, grown one step at a time: ``k[l]``, ``v[l]`` of shape ``(B, nh, t, hs)``."""

    def __init__(self, n_layer: int):
        self.k: list[Tensor | None] = [None] * n_layer
        self.v: list[Tensor | None] = [None] * n_layer

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def nbytes(self) -> int:
        """Bytes held by the cached tensors (measured: ``numel * element_size``)."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, written out.

    .. math:: \\mathrm{head}_h = \\mathrm{softmax}\\Big(\\frac{Q_h K_h^\\top}{\\sqrt{d_h}} + M\\Big) V_h,
              \\qquad M_{ij} = -\\infty \\text{ for } j > i

    ``c_attn`` maps ``(B, T, C)`` to queries, keys and values at once; ``c_proj`` mixes the heads.
    ``head_mask`` (``(n_head,)``) multiplies each head's output (Michel et al., 2019); the attention
    weights of the last call are kept in ``self.att`` when ``keep_attention`` is set.
    """

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd must be a multiple of n_head = {n_head}, got {n_embd!r}")
        self.n_head, self.n_embd = n_head, n_embd
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.keep_attention = False
        self.att: Tensor | None = None

    def forward(self, x: Tensor, head_mask: Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0) -> Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v))   # (B, nh, T, hs)
        past = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.append(layer, k, v)                                         # (B, nh, past + T, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)                              # (B, nh, T, past + T)
        i = torch.arange(T).unsqueeze(1) + past
        j = torch.arange(k.shape[2]).unsqueeze(0)
        att = att.masked_fill(j > i, float("-inf")).softmax(dim=-1)
        if self.keep_attention:
            self.att = att
        y = att @ v                                                                  # (B, nh, T, hs)
        if head_mask is not None:
            y = y * head_mask.view(1, -1, 1, 1)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-LayerNorm block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` (GELU MLP)."""

    def __init__(self, n_embd: int, n_head: int, mlp_ratio: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(n_embd, mlp_ratio * n_embd))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(mlp_ratio * n_embd, n_embd))

    def forward(self, x: Tensor, head_mask: Tensor | None = None, cache: KVCache | None = None,
                layer: int = 0) -> Tensor:
        x = x + self.attn(self.ln_1(x), head_mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    """A decoder-only transformer (GPT-2 layout) for the recall language.

    ``forward(idx)`` returns the logits of the **next token after the last position**, ``(B, vocab)``
    (what :func:`course_lib.models.train` and ``models.evaluate`` need); :meth:`sequence_logits` returns
    every position's, ``(B, T, vocab)``. :meth:`forward_embeddings` starts from token embeddings
    (``(B, T, C)``, for Integrated Gradients and occlusion).

    Parameters
    ----------
    vocab_size : int, default=81
        :func:`recall_vocab` ``(8, 8)["size"]``.
    block_size : int, default=8
        Longest sequence (learned positions).
    n_layer, n_head, n_embd : int, default=2, 4, 64
    mlp_ratio : int, default=2
        MLP hidden width = ``mlp_ratio * n_embd``.

    References
    ----------
    Vaswani et al. (2017), Attention is all you need. Radford et al. (2019), Language models are
    unsupervised multitask learners (GPT-2: pre-LN, tied embeddings).

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> TinyGPT()(torch.zeros(2, 8, dtype=torch.long)).shape
    torch.Size([2, 81])
    """

    def __init__(self, vocab_size: int = 81, block_size: int = 8, n_layer: int = 2, n_head: int = 4,
                 n_embd: int = 64, mlp_ratio: int = 2):
        super().__init__()
        self.vocab_size, self.block_size = check_int("vocab_size", vocab_size, 2), check_int("block_size", block_size, 1)
        self.n_layer, self.n_head = check_int("n_layer", n_layer, 1), check_int("n_head", n_head, 1)
        self.n_embd = check_int("n_embd", n_embd, 1)
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, check_int("mlp_ratio", mlp_ratio, 1)) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight                                          # tied (GPT-2)
        self.apply(self._init)
        for name, p in self.named_parameters():                                        # GPT-2's scaled residual init
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _check(self, idx: Tensor) -> None:
        if not isinstance(idx, Tensor) or idx.dtype != torch.long or idx.dim() != 2:
            raise ValueError(f"idx must be an int64 tensor of shape (B, T), got {getattr(idx, 'dtype', type(idx))} "
                             f"{tuple(getattr(idx, 'shape', ()))}")

    def embed(self, idx: Tensor) -> Tensor:
        """Token embeddings ``(B, T, C)`` (without positions)."""
        self._check(idx)
        return self.wte(idx)

    def forward_embeddings(self, tok: Tensor, head_mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """Every position's logits ``(B, T, vocab)`` from token embeddings ``tok`` ``(B, T, C)``."""
        past = 0 if cache is None else cache.length
        T = tok.shape[1]
        if past + T > self.block_size:
            raise ValueError(f"sequence length must be <= block_size = {self.block_size}, got {past + T}")
        x = tok + self.wpe(torch.arange(past, past + T))                               # (B, T, C)
        for layer, block in enumerate(self.h):
            x = block(x, None if head_mask is None else head_mask[layer], cache, layer)
        return self.lm_head(self.ln_f(x))                                              # (B, T, vocab)

    def sequence_logits(self, idx: Tensor, head_mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """Every position's next-token logits, ``(B, T, vocab)``."""
        return self.forward_embeddings(self.embed(idx), head_mask, cache)

    def forward(self, idx: Tensor, head_mask: Tensor | None = None) -> Tensor:
        return self.sequence_logits(idx, head_mask)[:, -1]                            # (B, vocab)

    def attentions(self, idx: Tensor) -> list[Tensor]:
        """Each layer's attention weights ``(B, nh, T, T)`` on ``idx`` (rows sum to 1)."""
        for block in self.h:
            block.attn.keep_attention = True
        try:
            with torch.no_grad():
                self.sequence_logits(idx)
            return [block.attn.att for block in self.h]
        finally:
            for block in self.h:
                block.attn.keep_attention, block.attn.att = False, None


@torch.no_grad()
def generate_logits(model: TinyGPT, idx: Tensor, *, use_cache: bool) -> Tensor:
    """Feed ``idx`` one token at a time, as a decoder does, and return the last step's logits ``(B, vocab)``.

    With ``use_cache`` each step runs only the new token and attends to the cached keys and values of
    the earlier ones (:class:`KVCache`): ``T`` steps of one token. Without it, step ``t`` recomputes all
    ``t`` tokens: ``T (T + 1) / 2`` token-steps for the same answer.
    """
    model._check(idx)
    if use_cache:
        cache = KVCache(model.n_layer)
        for t in range(idx.shape[1]):
            logits = model.sequence_logits(idx[:, t:t + 1], cache=cache)[:, -1]
        return logits
    for t in range(idx.shape[1]):
        logits = model.sequence_logits(idx[:, :t + 1])[:, -1]
    return logits
