"""An independent float64 numpy forward of OpenELM, written from ../shared/openelm.md.

It shares no code with mlx_slm: weights by Hub name, plain loops over layers and heads.
"""

import numpy as np


def make_divisible(v, d):
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


def rms_norm(x, w, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, base):
    """Half-split (NeoX) rotation of x [..., T, hd]."""
    hd = x.shape[-1]
    half = hd // 2
    inv = base ** (-np.arange(half, dtype=np.float64) * 2 / hd)
    angles = positions[:, None] * inv[None, :]
    cos, sin = np.cos(angles), np.sin(angles)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def silu(x):
    return x / (1 + np.exp(-x))


def forward(weights: dict, config: dict, ids: list[int]) -> np.ndarray:
    """Logits [T, vocab] for one sequence, float64."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    D, hd = config["model_dim"], config["head_dim"]
    base = config.get("rope_freq_constant", 10000)
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    h = w["transformer.token_embeddings.weight"][ids]
    causal = np.tril(np.ones((T, T), dtype=bool))
    for i in range(config["num_transformer_layers"]):
        p = f"transformer.layers.{i}."
        nq, nkv = config["num_query_heads"][i], config["num_kv_heads"][i]
        x = rms_norm(h, w[p + "attn_norm.weight"])
        qkv = (x @ w[p + "attn.qkv_proj.weight"].T).reshape(T, nq + 2 * nkv, hd)
        q, k, v = qkv[:, :nq], qkv[:, nq:nq + nkv], qkv[:, nq + nkv:]
        q = rms_norm(q, w[p + "attn.q_norm.weight"])
        k = rms_norm(k, w[p + "attn.k_norm.weight"])
        q = rope(q.transpose(1, 0, 2), pos, base)
        k = rope(k.transpose(1, 0, 2), pos, base)
        v = v.transpose(1, 0, 2)
        groups = nq // nkv
        out = np.zeros((nq, T, hd))
        for head in range(nq):
            kv = head // groups  # kv head j serves query heads j*g .. j*g+g-1
            scores = q[head] @ k[kv].T / np.sqrt(hd)
            scores = np.where(causal, scores, -np.inf)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            out[head] = probs @ v[kv]
        h = h + out.transpose(1, 0, 2).reshape(T, nq * hd) @ w[p + "attn.out_proj.weight"].T
        x = rms_norm(h, w[p + "ffn_norm.weight"])
        f = make_divisible(config["ffn_multipliers"][i] * D, config["ffn_dim_divisor"])
        y = x @ w[p + "ffn.proj_1.weight"].T
        gate, up = y[:, :f], y[:, f:]
        h = h + (silu(gate) * up) @ w[p + "ffn.proj_2.weight"].T
    h = rms_norm(h, w["transformer.norm.weight"])
    head = w.get("lm_head.weight", w["transformer.token_embeddings.weight"])
    return h @ head.T
