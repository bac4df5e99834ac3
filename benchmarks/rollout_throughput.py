"""Rollout throughput: our KV-cache sampling loop (trainer.hf_engine.HFEngine) vs `model.generate`.

    python benchmarks/rollout_throughput.py [--threads 2] [--batch 64] [--new-tokens 128] [--repeats 3]

Both sample at temperature 1 from the same demo-sized models (random weights unless --model-dir is given, with
EOS suppressed so that every row generates exactly --new-tokens tokens and both do the same work) and report
generated tokens per second and the ratio. Target: >= 2x.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from trainer.engine import SamplingParams
from trainer.hf_engine import HFEngine
from trainer.models import load_causal_lm, tiny_llama

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


def bench(model, batch: int, new_tokens: int, repeats: int) -> tuple[float, float]:
    prompts = [[3 + (i + j) % 20 for j in range(6 + i % 8)] for i in range(batch)]
    # Our loop stops rows at EOS; suppress EOS by making it unreachable (a token id outside the vocabulary).
    engine = HFEngine(model, eos_id=-1, pad_id=PAD, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens)
    from trainer.hf_engine import left_pad

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
    ours, theirs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = engine.generate(prompts, params)
        ours.append(time.perf_counter() - t0)
        assert out.tokens_BT.shape == (batch, new_tokens)
        t0 = time.perf_counter()
        with torch.no_grad():
            seqs = model.generate(
                input_ids=ids_BP,
                attention_mask=mask_BP,
                generation_config=gen_config,
                logits_processor=LogitsProcessorList([NoEOS()]),
            )
        theirs.append(time.perf_counter() - t0)
        assert seqs.shape == (batch, ids_BP.shape[1] + new_tokens)
    tokens = batch * new_tokens
    return tokens / min(ours), tokens / min(theirs)


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
        ours, theirs = bench(model, args.batch, args.new_tokens, args.repeats)
        print(
            f"{size:8s} {n_params / 1e6:.2f}M params: KV-cache loop {ours:8.0f} tok/s | "
            f"model.generate {theirs:8.0f} tok/s | ratio {ours / theirs:.2f}x"
        )


if __name__ == "__main__":
    main()
