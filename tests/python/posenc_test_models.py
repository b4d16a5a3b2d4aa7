"""A small attention block built from every posenc.nn module, shared by the module tests
(torch.compile) and the TorchScript -> C++ test."""
import math

import torch
from torch import Tensor, nn

import posenc


class TinyPositionalAttention(nn.Module):
    """One attention layer that exercises every posenc.nn module.

    x (B, S, d_model) -> (out (B, S, d_model), scores (B, H, S, S)). Queries and keys are
    rotated (RoPE); the scores get ALiBi, T5, KERPLE and Transformer-XL position terms, the
    input gets sinusoidal and learned absolute encodings. Not a sensible model, a thorough one.
    """

    def __init__(self, d_model: int = 16, num_heads: int = 2, max_len: int = 64) -> None:
        super().__init__()
        head_dim = d_model // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = 1.0 / math.sqrt(head_dim)
        self.sinusoidal = posenc.nn.SinusoidalPositionalEncoding(d_model)
        self.learned = posenc.nn.LearnedPositionalEmbedding(max_len, d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.rope = posenc.nn.RotaryEmbedding(head_dim, rotary_dim=head_dim - 2)
        self.alibi = posenc.nn.ALiBi(num_heads, causal=False)
        self.t5 = posenc.nn.T5RelativeBias(num_heads, num_buckets=8, max_distance=16)
        self.kerple = posenc.nn.KERPLEBias(num_heads, kind="log", causal=False)
        self.txl = posenc.nn.TransformerXLRelativeScore(d_model, num_heads, head_dim)

    def forward(self, x: Tensor, offset: int = 0):
        b, s = x.size(0), x.size(1)
        h = self.learned(self.sinusoidal(x, offset), offset)
        qkv = self.qkv(h).view(b, s, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.rope(qkv[0], qkv[1], offset=offset)
        v = qkv[2]
        scores = torch.matmul(self.txl.content_query(q), k.transpose(-1, -2)) * self.scale
        scores = scores + self.txl(q) * self.scale
        scores = scores + self.alibi(s, s, offset, offset) + self.t5(s, s) + self.kerple(s, s)
        attn = torch.softmax(scores, dim=-1)
        y = torch.matmul(attn, v).transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        return self.out(y), scores
