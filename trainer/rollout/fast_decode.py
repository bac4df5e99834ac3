"""A hand-written decode step for Llama-family models (Llama, Qwen2): the fast path of `HFEngine`.

On the tiny demo models a decode step is ~60 small tensor ops, so transformers' per-step machinery (mask
building, cache objects, module dispatch) costs more than the arithmetic. This module runs the same math
functionally on the HF model's own parameters with a preallocated KV cache:

- weights: the decoder reads the model's Parameter objects at every `start`, so an optimizer step between two
  rollout batches is seen by the next one: by reference, except that on small models the q/k/v and the gate/up
  weights are stacked (a fresh copy per batch) so that a step runs 4 GEMMs per layer instead of 7;
- KV cache: keys and values, (layers, B * kv_heads, max_len, head_dim) each, written in place, one column per step;
  prompts are left-padded, so every row writes the same column and reads the prefix [0, column];
- positions: per row, counted over real tokens (pads do not count), exactly like `HFEngine`'s generic path;
  the RoPE rows of all decode steps are gathered at `start`; RoPE runs on the q and k heads in one pass;
  pad keys are masked out; a pad query attends to itself only, so its (unused) K/V stay finite;
- op order follows transformers' modeling_llama (RMSNorm in float32, rotate-half RoPE, SiLU-gated MLP), so
  logits match the HF forward to float rounding and tokens match `model.generate` for the same seed
  (tests/trainer/test_fast_decode.py); stacking and the one-pass RoPE leave every logit bit-equal.

Anything the math does not cover (other architectures, RoPE scaling, sliding windows, attention dropout in train
mode, non-SiLU activations) is refused by `unsupported_reason`, and `HFEngine` then uses its generic loop.
Shapes: B rows, P prompt columns, L cache columns, H query heads, K kv heads, G = H / K, D head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the fast path cannot run `model` exactly, or None when it can."""
    name = type(model).__name__
    if name not in SUPPORTED_ARCHITECTURES:
        return f"architecture {name} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
    config = model.config
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default" or set(rope) - {"rope_type", "rope_theta"}:
        return f"RoPE parameters {rope} (only plain rope_theta is supported)"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act}"
    if getattr(config, "use_sliding_window", False) or any(
        t != "full_attention" for t in (getattr(config, "layer_types", None) or [])
    ):
        return "sliding-window attention"
    if model.training and getattr(config, "attention_dropout", 0.0) > 0:
        return "attention dropout in train mode"
    return None


def rope_tables(config, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(length, D) cos and "signed" sin tables for positions 0..length-1, computed as transformers does.

    The sin table has its first half negated so that rotate_half(x) * sin == x.roll(D/2) * signed_sin exactly
    (negation is exact in IEEE floats): one roll instead of two slices, a negation and a cat per step.
    """
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base = config.rope_parameters["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    freqs = torch.arange(length, dtype=torch.int64).float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin()
    signed_sin = torch.cat((-sin[:, : dim // 2], sin[:, dim // 2 :]), dim=-1)
    return emb.cos().to(dtype), signed_sin.to(dtype)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm: normalise in float32, cast back, then scale."""
    if x.dtype == torch.float32:
        # One dispatch instead of ~7; the same ops in the same order as the formula below in float32.
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    return (x * cos) + (x.roll(x.shape[-1] // 2, dims=-1) * signed_sin)


def _residual_linear(
    x_BH: torch.Tensor, a_BI: torch.Tensor, w_t_IH: torch.Tensor, b_H: torch.Tensor | None
) -> torch.Tensor:
    """x + a @ w_t (+ b) for 2-D x, w_t the transposed weight; without a bias the residual add is folded into the
    GEMM (one op)."""
    if b_H is None:
        return torch.addmm(x_BH, a_BI, w_t_IH)
    return x_BH + F.linear(a_BI, w_t_IH.t(), b_H)


def _cat_biases(pairs: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor | None:
    """The biases of stacked (weight, bias) pairs; None when none has one, zeros for those without in a mixed group."""
    if all(b is None for _, b in pairs):
        return None
    return torch.cat([w.new_zeros(w.shape[0]) if b is None else b for w, b in pairs])


class _Layer:
    """One decoder layer's parameters for a rollout batch: norms, o and down projections by reference; q/k/v and
    gate/up concatenated (one GEMM each instead of five) when `fuse`, else by reference too.

    The concatenations are fresh copies made at every `FastDecoder.start`, so an optimizer step between two batches
    is seen by the next one; each output column of a GEMM is the same dot product whether or not the weights are
    stacked, so fusing does not change a logit (measured: bit-equal).
    """

    def __init__(self, layer: nn.Module, fuse: bool):
        attn, mlp = layer.self_attn, layer.mlp
        self.fuse = fuse
        self.q_k_v = [(lin.weight, lin.bias) for lin in (attn.q_proj, attn.k_proj, attn.v_proj)]
        self.gate_up = [(lin.weight, lin.bias) for lin in (mlp.gate_proj, mlp.up_proj)]
        if fuse:
            self.w_qkv = torch.cat([w for w, _ in self.q_k_v])
            self.b_qkv = _cat_biases(self.q_k_v)
            self.w_gu = torch.cat([w for w, _ in self.gate_up])
            self.b_gu = _cat_biases(self.gate_up)
        self.wo, self.bo = attn.o_proj.weight, attn.o_proj.bias
        self.wd, self.bd = mlp.down_proj.weight, mlp.down_proj.bias
        self.wo_t, self.wd_t = self.wo.t(), self.wd.t()  # views, made once per batch instead of once per step
        self.norm1, self.eps1 = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.norm2, self.eps2 = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon

    def qkv(self, h_BE: torch.Tensor) -> torch.Tensor:
        """(B, E) -> (B, (H + 2K) * D): the q, k and v projections side by side."""
        if self.fuse:
            return F.linear(h_BE, self.w_qkv, self.b_qkv)
        return torch.cat([F.linear(h_BE, w, b) for w, b in self.q_k_v], dim=-1)

    def silu_gate_up(self, h_BE: torch.Tensor) -> torch.Tensor:
        """(B, E) -> (B, I): silu(gate(h)) * up(h)."""
        if self.fuse:
            gu_B2I = F.linear(h_BE, self.w_gu, self.b_gu)
            inter = gu_B2I.shape[-1] // 2
            return F.silu(gu_B2I[..., :inter]).mul_(gu_B2I[..., inter:])  # in place: one allocation fewer
        (wg, bg), (wu, bu) = self.gate_up
        return F.silu(F.linear(h_BE, wg, bg)) * F.linear(h_BE, wu, bu)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.silu_gate_up(_rms(x, self.norm2, self.eps2)), self.wd, self.bd)


class FastDecoder:
    """Prefill + one-token decode steps for a supported model; `start` then `step` repeatedly.

    `start(ids_BP, mask_BP, max_new_tokens)` -> logits (B, V) at each row's last prompt token;
    `step(token_B)` feeds one token per row and returns the next logits (B, V). At most max_new_tokens - 1
    steps follow a start (the last sampled token is never fed back).

    fuse_max_numel: q/k/v and gate/up weights are stacked into one GEMM each (a copy per rollout batch) when the
    model's stacked weights have at most this many elements in all: on small models the per-GEMM overhead is what
    stacking saves; on large ones the GEMMs' arithmetic dominates and the copy would only cost memory.
    """

    def __init__(self, model: nn.Module, *, fuse_max_numel: int = 2**25):
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"fast decode does not support this model: {reason}")
        self.model = model
        config = model.config
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.fuse_max_numel = fuse_max_numel
        self._cos_LD = self._sin_LD = torch.empty(0)

    def _tables(self, length: int, dtype: torch.dtype, device: torch.device) -> None:
        if self._cos_LD.shape[0] < length or self._cos_LD.dtype != dtype or self._cos_LD.device != device:
            # Computed once (and again only if a longer rollout needs more positions).
            length = max(length, self._cos_LD.shape[0], getattr(self.model.config, "max_position_embeddings", 0))
            cos, sin = rope_tables(self.model.config, length, dtype)
            self._cos_LD, self._sin_LD = cos.to(device), sin.to(device)

    def _read_parameters(self) -> None:
        """Fresh references (and stacked copies) every batch: sees optimizer updates and re-assigned Parameters."""
        inner = self.model.model
        layers = inner.layers[: self.model.config.num_hidden_layers]
        stacked = sum(
            lin.weight.numel()
            for layer in layers
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                        layer.mlp.gate_proj, layer.mlp.up_proj)
        )
        self.layers = [_Layer(layer, fuse=stacked <= self.fuse_max_numel) for layer in layers]
        self.embed, self.final_norm = inner.embed_tokens.weight, inner.norm.weight
        self.final_eps, self.lm_head = inner.norm.variance_epsilon, self.model.lm_head.weight

    @torch.inference_mode()
    def start(self, ids_BP: torch.Tensor, mask_BP: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        self._read_parameters()
        B, P = ids_BP.shape
        dtype, device = self.embed.dtype, self.embed.device
        L = P + max_new_tokens
        self._tables(L, dtype, device)
        ids_BP, mask_BP = ids_BP.to(device), mask_BP.to(device)
        # (layers, N, L, D) with N = B * K (row, kv head) pairs: a decode step writes one column, 128 contiguous
        # bytes per pair. (Keys cached transposed read faster in the score GEMV, but their column write touches
        # one cache line per float: no faster over a rollout, measured side by side.)
        self.keys = torch.zeros((len(self.layers), B * self.n_kv, L, self.head_dim), dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        key_ok_BL = torch.ones((B, L), dtype=torch.bool, device=device)
        key_ok_BL[:, :P] = mask_BP.bool()
        # Additive key mask (0 or -inf) per (row, kv head) pair, the layout of the decode-step attention.
        key_bias_BL = torch.zeros((B, L), dtype=dtype, device=device).masked_fill(~key_ok_BL, -torch.inf)
        self.key_bias_NL = key_bias_BL.repeat_interleave(self.n_kv, dim=0)
        pos_BP = (mask_BP.long().cumsum(dim=1) - 1).clamp(min=0)
        # RoPE rows of every decode step, gathered once: step t of row b is at position pos_BP[b, -1] + 1 + t.
        pos_BT = pos_BP[:, -1:] + 1 + torch.arange(max_new_tokens, device=device)
        self.cos_BTD, self.sin_BTD = self._cos_LD[pos_BT], self._sin_LD[pos_BT]
        self.prompt_len = self.column = P

        # Prefill: causal attention over real keys; each query may also see itself (keeps pad rows finite).
        causal_PP = torch.ones((P, P), dtype=torch.bool, device=device).tril()
        allow_B1PP = (causal_PP & key_ok_BL[:, None, :P]) | torch.eye(P, dtype=torch.bool, device=device)
        allow_B1PP = allow_B1PP[:, None]
        cos_B1PD, sin_B1PD = self._cos_LD[pos_BP][:, None], self._sin_LD[pos_BP][:, None]
        x = F.embedding(ids_BP, self.embed)
        H, K, D = self.n_heads, self.n_kv, self.head_dim
        for i, lay in enumerate(self.layers):
            qkv_BSPD = lay.qkv(_rms(x, lay.norm1, lay.eps1)).view(B, P, H + 2 * K, D).transpose(1, 2)
            q = _rope(qkv_BSPD[:, :H], cos_B1PD, sin_B1PD)
            k = _rope(qkv_BSPD[:, H : H + K], cos_B1PD, sin_B1PD)
            v = qkv_BSPD[:, H + K :]
            self.keys[i, :, :P] = k.reshape(B * K, P, D)
            self.values[i, :, :P] = v.reshape(B * K, P, D)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allow_B1PP, enable_gqa=H != K)
            x = x + F.linear(o.transpose(1, 2).reshape(B, P, H * D), lay.wo, lay.bo)
            x = x + lay.mlp(x)
        return F.linear(_rms(x[:, -1], self.final_norm, self.final_eps), self.lm_head)

    @torch.inference_mode()
    def step(self, token_B: torch.Tensor) -> torch.Tensor:
        c = self.column
        if c >= self.values.shape[2]:
            raise RuntimeError("fast decode: more steps than max_new_tokens allows")
        B = token_B.shape[0]
        H, K, D = self.n_heads, self.n_kv, self.head_dim
        G = H // K
        t = c - self.prompt_len
        cos_B1D, sin_B1D = self.cos_BTD[:, t, None], self.sin_BTD[:, t, None]
        bias_N1C = self.key_bias_NL[:, None, : c + 1]
        # This step's key column and the first c + 1 columns of every layer, as views (no copies).
        new_k_LND, new_v_LND = self.keys[:, :, c], self.values[:, :, c]
        keys_LNCD, values_LNCD = self.keys[:, :, : c + 1], self.values[:, :, : c + 1]
        x = F.embedding(token_B.to(self.embed.device), self.embed)  # (B, hidden)
        for i, lay in enumerate(self.layers):
            qkv_BSD = lay.qkv(_rms(x, lay.norm1, lay.eps1)).view(B, H + 2 * K, D)  # S = H + 2K heads
            qk_BSD = _rope(qkv_BSD[:, : H + K], cos_B1D, sin_B1D)  # the q and k heads at once
            new_k_LND[i] = qk_BSD[:, H:].reshape(B * K, D)
            new_v_LND[i] = qkv_BSD[:, H + K :].reshape(B * K, D)
            # Query heads kv*G .. kv*G+G-1 share kv head `kv` (transformers' repeat_kv order): grouping them
            # as G query rows of one kv head is GQA without materialising repeated keys.
            q_NGD = qk_BSD[:, :H].reshape(B * K, G, D)
            # N = B*K (batch, kv head) pairs, each a G x C attention; baddbmm fuses q.k^T, the scale and the mask.
            scores_NGC = torch.baddbmm(bias_N1C, q_NGD, keys_LNCD[i].transpose(1, 2), alpha=self.scale)
            o = torch.bmm(torch.softmax(scores_NGC, dim=-1), values_LNCD[i])
            x = _residual_linear(x, o.view(B, H * D), lay.wo_t, lay.bo)
            x = _residual_linear(x, lay.silu_gate_up(_rms(x, lay.norm2, lay.eps2)), lay.wd_t, lay.bd)
        self.column = c + 1
        return F.linear(_rms(x, self.final_norm, self.final_eps), self.lm_head)
