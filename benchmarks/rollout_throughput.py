"""Rollout throughput: HFEngine's fast decode path and its generic loop vs `model.generate`, side by side.

    python benchmarks/rollout_throughput.py [--threads 2] [--batch 64] [--new-tokens 128] [--repeats 3]

  fast     HFEngine(fast=True): trainer/rollout/fast_decode.py, a hand-written decode step with a preallocated KV cache
  generic  HFEngine(fast=False): a sampling loop over the HF model's forward with its DynamicCache
  generate `model.generate` (transformers' own sampling loop)

All three sample at temperature 1 from the same demo-sized models (random weights unless --model-dir is given, with
EOS suppressed so that every row generates exactly --new-tokens tokens and all do the same work) and report
generated tokens per second (best of --repeats, the three interleaved so load from other processes hits them
alike) and the ratios to `model.generate`. Target: fast >= 2x generate.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from opdwatch.trainer.data.models import load_causal_lm
from opdwatch.trainer.recipes.demo.tiny_llama import tiny_llama
from opdwatch.trainer.rollout.engine import SamplingParams
from opdwatch.trainer.rollout.fast_decode import unsupported_reason
from opdwatch.trainer.rollout.hf_engine import HFEngine, left_pad

EOS, PAD, VOCAB = 1, 0, 29


class NoEOS(LogitsProcessor):
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, EOS] = float("-inf")
        return scores


def model_for(size: str, model_dir: str | None):
    if model_dir:
        return load_causal_lm(model_dir, trainable=False)
    hidden, layers, inter = {"student": (64, 2, 128), "teacher": (128, 4, 384)}[size]
    return tiny_llama(
        vocab_size=VOCAB,
        hidden=hidden,
        layers=layers,
        heads=4,
        intermediate=inter,
        max_len=256,
        pad_id=PAD,
        eos_id=EOS,
        seed=0,
    ).eval()


def bench(model, batch: int, new_tokens: int, repeats: int) -> dict[str, float]:
    """Tokens/s of each contender (best of `repeats`)."""
    prompts = [[3 + (i + j) % 20 for j in range(6 + i % 8)] for i in range(batch)]
    # Our loop stops rows at EOS; suppress EOS by making it unreachable (a token id outside the vocabulary).
    engines = {
        name: HFEngine(model, eos_id=-1, pad_id=PAD, generator=torch.Generator().manual_seed(0), fast=fast)
        for name, fast in [("fast", True), ("generic", False)]
    }
    if (reason := unsupported_reason(model)) is not None:
        print(f"  note: no fast path for this model ({reason}): 'fast' runs the generic loop")
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens)
    ids_BP, mask_BP = left_pad(prompts, PAD)
    gen_config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )

    def run_generate() -> None:
        with torch.no_grad():
            seqs = model.generate(
                input_ids=ids_BP,
                attention_mask=mask_BP,
                generation_config=gen_config,
                logits_processor=LogitsProcessorList([NoEOS()]),
            )
        assert seqs.shape == (batch, ids_BP.shape[1] + new_tokens)

    def run_engine(name: str) -> None:
        out = engines[name].generate(prompts, params)
        assert out.tokens_BT.shape == (batch, new_tokens)

    runs = {"fast": lambda: run_engine("fast"), "generic": lambda: run_engine("generic"), "generate": run_generate}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - t0)
    return {name: batch * new_tokens / min(s) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--model-dir", default=None, help="a saved model instead of the random demo-sized ones"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} batch={args.batch} new_tokens={args.new_tokens} (best of {args.repeats})")
    for size in ["model"] if args.model_dir else ["student", "teacher"]:
        model = model_for(size, args.model_dir)
        n_params = sum(p.numel() for p in model.parameters())
        tps = bench(model, args.batch, args.new_tokens, args.repeats)
        print(
            f"{size:8s} {n_params / 1e6:.2f}M params: fast {tps['fast']:8.0f} tok/s | generic loop "
            f"{tps['generic']:8.0f} tok/s | model.generate {tps['generate']:8.0f} tok/s | fast/generate "
            f"{tps['fast'] / tps['generate']:.2f}x | generic/generate {tps['generic'] / tps['generate']:.2f}x | "
            f"fast/generic {tps['fast'] / tps['generic']:.2f}x"
        )


if __name__ == "__main__":
    main()
