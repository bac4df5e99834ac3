"""rollout.fast_decode: same logits as the transformers forward, same rollouts as HFEngine's generic loop and as
`model.generate`; neither path uses an API that the installed transformers deprecates."""

from __future__ import annotations

import logging
import re
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import transformers
from packaging.requirements import Requirement
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.rollout.engine import RowIndex, SamplingParams
from opdwatch.trainer.rollout.fast_decode import FastDecoder, unsupported_reason
from opdwatch.trainer.rollout.hf_engine import HFEngine, left_pad

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

VOCAB, PAD, EOS = 37, 0, 1
PROMPTS = [[3, 4, 5], [7, 8, 9, 10, 11, 12, 2], [5], [9, 9, 9, 9], [6, 7]]  # left padding of 0..6 columns


def tiny(arch: str, **extra) -> torch.nn.Module:
    """A random float32 model with GQA (6 query heads on 2 kv heads) and non-trivial biases and norms."""
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    config = config_cls(
        vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
        intermediate_size=96, max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS, **extra,
    )
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():  # HF initialises biases to 0 and norm weights to 1: perturb so that they matter
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


ARCHS = [("llama", {}), ("qwen2", {}), ("llama", {"attention_bias": True, "mlp_bias": True, "rope_theta": 500.0})]


@pytest.mark.parametrize("fuse_max_numel", [2**25, 0], ids=["stacked-weights", "separate-weights"])
@pytest.mark.parametrize(("arch", "extra"), ARCHS)
def test_step_logits_match_the_hf_forward(arch: str, extra: dict, fuse_max_numel: int) -> None:
    model = tiny(arch, **extra)
    assert unsupported_reason(model) is None
    ids_BP, mask_BP = left_pad(PROMPTS, PAD)
    fed_BT = torch.randint(2, VOCAB, (len(PROMPTS), 6), generator=torch.Generator().manual_seed(1))
    decoder = FastDecoder(model, fuse_max_numel=fuse_max_numel)
    fast = [decoder.start(ids_BP, mask_BP, max_new_tokens=fed_BT.shape[1] + 1)]
    fast += [decoder.step(fed_BT[:, t]) for t in range(fed_BT.shape[1])]
    assert all(lay.fuse == (fuse_max_numel > 0) for lay in decoder.layers)
    # Reference: one full forward over prompt + fed tokens, positions counting real tokens only.
    full_ids = torch.cat([ids_BP, fed_BT], dim=1)
    full_mask = torch.cat([mask_BP, torch.ones_like(fed_BT)], dim=1)
    with torch.no_grad():
        ref = model(
            input_ids=full_ids, attention_mask=full_mask, position_ids=(full_mask.cumsum(1) - 1).clamp(min=0)
        ).logits
    P = ids_BP.shape[1]
    for t, logits_BV in enumerate(fast):
        torch.testing.assert_close(logits_BV, ref[:, P - 1 + t], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("arch", "extra"), ARCHS[:2])
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0, max_new_tokens=12),
        SamplingParams(temperature=1.0, max_new_tokens=20),
        SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=20),
    ],
)
def test_rollouts_equal_the_generic_loop(arch: str, extra: dict, params: SamplingParams) -> None:
    model = tiny(arch, **extra)
    prompts = PROMPTS * 4
    outs = [
        HFEngine(model, eos_id=EOS, pad_id=PAD, generator=torch.Generator().manual_seed(7), fast=fast).generate(
            prompts, params
        )
        for fast in (True, False)
    ]
    fast, generic = outs
    assert torch.equal(fast.tokens_BT, generic.tokens_BT)
    assert torch.equal(fast.lengths_B, generic.lengths_B)
    assert fast.finish_reasons == generic.finish_reasons
    torch.testing.assert_close(fast.logp_BT, generic.logp_BT, rtol=0, atol=1e-5)
    if params.temperature > 0 and params.top_p == 1.0:  # EOS is reachable: both finish reasons occur
        assert set(fast.finish_reasons) == {"eos", "length"}


def test_counter_rng_rollouts_equal_the_generic_loop() -> None:
    model = tiny("llama")
    params = SamplingParams(temperature=1.0, max_new_tokens=16)
    fast, generic = (
        HFEngine(model, eos_id=EOS, pad_id=PAD, generator=torch.Generator().manual_seed(3), counter_rng=True,
                 fast=fast).generate(PROMPTS, params)
        for fast in (True, False)
    )
    assert torch.equal(fast.tokens_BT, generic.tokens_BT)
    torch.testing.assert_close(fast.logp_BT, generic.logp_BT, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_counter_rng_rollouts_follow_their_global_row_number(fast: bool) -> None:
    # generate's `rows` argument places a call's rows in the global batch: a rank that samples global rows 3 and 0
    # of 5 gets the rollouts one process gets for them (same seed: same per-call base of the uniforms)
    model = tiny("llama")
    params = SamplingParams(temperature=1.0, max_new_tokens=16)

    def engine() -> HFEngine:
        return HFEngine(model, eos_id=EOS, pad_id=PAD, generator=torch.Generator().manual_seed(3), counter_rng=True,
                        fast=fast)

    whole = engine().generate(PROMPTS, params).token_lists()
    part = engine().generate([PROMPTS[3], PROMPTS[0]], params, rows=RowIndex((3, 0), len(PROMPTS)))
    assert part.token_lists() == [whole[3], whole[0]]
    with pytest.raises(ValueError, match="2 row numbers for 1 prompts"):
        engine().generate([PROMPTS[0]], params, rows=RowIndex((3, 0), len(PROMPTS)))


def test_weight_updates_are_seen_by_the_next_batch() -> None:
    model = tiny("llama")
    engine = HFEngine(model, eos_id=EOS, pad_id=PAD, fast=True)
    params = SamplingParams(temperature=0.0, max_new_tokens=10)
    before = engine.generate(PROMPTS, params)
    with torch.no_grad():  # an optimizer step updates parameters in place
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    after = engine.generate(PROMPTS, params)
    generic = HFEngine(model, eos_id=EOS, pad_id=PAD, fast=False).generate(PROMPTS, params)
    assert not torch.equal(before.tokens_BT, after.tokens_BT)
    assert torch.equal(after.tokens_BT, generic.tokens_BT)


def test_unsupported_models_use_the_generic_loop() -> None:
    scaled = tiny("llama", rope_scaling={"rope_type": "linear", "factor": 2.0})
    sliding = tiny("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=0)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64)).eval()
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    for model in (scaled, sliding, gpt2):
        assert unsupported_reason(model) is not None
        with pytest.raises(ValueError, match="does not support"):
            FastDecoder(model)
        engine = HFEngine(model, eos_id=EOS, pad_id=PAD, fast=True)
        out = engine.generate(PROMPTS, params)
        assert engine.decoder is None
        assert torch.equal(out.tokens_BT, HFEngine(model, eos_id=EOS, pad_id=PAD, fast=False).generate(
            PROMPTS, params).tokens_BT)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize("temperature", [1.0, 0.0], ids=["sampled", "greedy"])
def test_nan_weights_are_refused_with_a_clear_error(fast: bool, temperature: float) -> None:
    model = tiny("llama")
    with torch.no_grad():
        model.lm_head.weight[3, 0] = float("nan")  # one NaN weight: every logit row has a NaN
    engine = HFEngine(model, eos_id=EOS, pad_id=PAD, generator=torch.Generator().manual_seed(0), fast=fast)
    with pytest.raises(OpdwatchError, match="logits are NaN"):
        engine.generate(PROMPTS, SamplingParams(temperature=temperature, max_new_tokens=4))


def test_train_mode_with_attention_dropout_is_refused() -> None:
    model = tiny("llama", attention_dropout=0.1)
    assert unsupported_reason(model) is None  # eval mode: dropout is off
    assert "dropout" in str(unsupported_reason(model.train()))


def test_stacked_and_separate_weights_give_bit_equal_logits() -> None:
    # stacking q/k/v and gate/up only changes how many GEMMs run, not any dot product: the rollouts cannot move
    model = tiny("llama", attention_bias=True, mlp_bias=True)
    ids_BP, mask_BP = left_pad(PROMPTS, PAD)
    fed_BT = torch.randint(2, VOCAB, (len(PROMPTS), 5), generator=torch.Generator().manual_seed(2))
    runs = []
    for fuse_max_numel in (2**25, 0):
        decoder = FastDecoder(model, fuse_max_numel=fuse_max_numel)
        runs.append([decoder.start(ids_BP, mask_BP, 6)] + [decoder.step(fed_BT[:, t]) for t in range(5)])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize(("arch", "temperature"), [("llama", 1.0), ("qwen2", 0.8), ("llama", 0.0)])
def test_rollouts_equal_model_generate(arch: str, temperature: float) -> None:
    # Same seed, same samples as transformers' own loop: generate draws from the global generator with
    # torch.multinomial, HFEngine from its own one seeded alike; finished rows are padded by both.
    model = tiny(arch)
    prompts = PROMPTS * 2
    params = SamplingParams(temperature=temperature, max_new_tokens=14)
    ours = HFEngine(model, eos_id=EOS, pad_id=PAD, generator=torch.Generator().manual_seed(11)).generate(
        prompts, params
    )
    ids_BP, mask_BP = left_pad(prompts, PAD)
    config = GenerationConfig(
        do_sample=temperature > 0, temperature=temperature or None, top_k=0, top_p=1.0, max_new_tokens=14,
        pad_token_id=PAD, eos_token_id=EOS,
    )
    torch.manual_seed(11)
    with torch.no_grad():
        theirs_BT = model.generate(input_ids=ids_BP, attention_mask=mask_BP, generation_config=config)[
            :, ids_BP.shape[1] :
        ]
    assert torch.equal(ours.tokens_BT, theirs_BT)
    if temperature > 0:
        assert set(ours.finish_reasons) == {"eos", "length"}  # both kinds of row end occur


def test_rollouts_use_no_deprecated_transformers_api() -> None:
    # transformers 5.24 deprecates `past_key_values` (FutureWarning per call) and its output attribute (a
    # once-per-process log line): both rollout paths must trigger neither
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    hf_logger = logging.getLogger("transformers")
    transformers.utils.logging.warning_once.cache_clear()  # a line logged earlier in this process is logged again
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for model, fast in [(tiny("llama"), True), (tiny("llama"), False), (tiny("qwen2"), False)]:
                engine = HFEngine(model, eos_id=EOS, pad_id=PAD, fast=fast)
                engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=6))
                assert (engine.decoder is not None) == fast
    finally:
        hf_logger.removeHandler(handler)
    seen += [str(w.message) for w in caught]
    assert not [m for m in seen if re.search(r"deprecat|will be removed", m, re.IGNORECASE)]


def test_installed_transformers_is_in_the_pinned_range() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    train = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["train"]]
    (spec,) = [r for r in train if r.name == "transformers"]
    assert spec.specifier.contains(version("transformers")), f"installed {version('transformers')} not in {spec}"
    assert not spec.specifier.contains("5.23.0")  # the newest version without the `cache=` argument
