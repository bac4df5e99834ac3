"""Rollout throughput: HFEngine's fast decode path and its generic loop vs `model.generate`, side by side.

    python benchmarks/rollout_throughput.py [--threads 2] [--batch 64] [--new-tokens 128] [--repeats 7]
                                            [--sizes student teacher] [--arms fast generic generate]

  fast     HFEngine(fast=True): trainer/rollout/fast_decode.py, a hand-written decode step with a preallocated KV cache
  generic  HFEngine(fast=False): a sampling loop over the HF model's forward with its DynamicCache
  generate `model.generate` (transformers' own sampling loop)

All three sample at temperature 1 from the same demo-sized models (random weights unless --model-dir is given, with
EOS suppressed so that every row generates exactly --new-tokens tokens and all do the same work). The machine is
shared, so the arms run interleaved, one of each per round (the order rotating from round to round), and the
figures are medians: tokens/s of each arm, and the median over rounds of each round's own ratio to `model.generate`
(the arms of one round ran under nearly the same load). The load is printed with them: the 1-minute load average
and the CPU cores that other processes used while the benchmark ran (from /proc/stat minus this process's own CPU
time). `fast` and `generic` draw from equally seeded generators, so every round also checks that they sampled the
same tokens. Target: fast >= 2x generate.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from opdwatch.trainer.data.models import load_causal_lm
from opdwatch.trainer.recipes.demo.tiny_llama import tiny_llama
from opdwatch.trainer.rollout.engine import SamplingParams
from opdwatch.trainer.rollout.fast_decode import unsupported_reason
from opdwatch.trainer.rollout.hf_engine import HFEngine, left_pad

EOS, PAD, VOCAB = 1, 0, 29
ARMS = ("fast", "generic", "generate")


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


class LoadMeter:
    """Between `__enter__` and `__exit__` (Linux /proc/stat): CPU cores busy with other processes, and cores the
    hypervisor withheld from this VM (steal time: on a shared host it comes and goes, and it slows whichever arm
    runs while it lasts)."""

    def __enter__(self) -> LoadMeter:
        (self.busy0, self.steal0), self.own0, self.t0 = self._busy_steal_s(), self._own_s(), time.perf_counter()
        self.loadavg0 = os.getloadavg()[0]
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.t0
        busy, steal = self._busy_steal_s()
        others = (busy - self.busy0) - (self._own_s() - self.own0)
        self.other_cores = max(others, 0.0) / wall
        self.steal_cores = max(steal - self.steal0, 0.0) / wall
        self.loadavg = (self.loadavg0, os.getloadavg()[0])

    @staticmethod
    def _busy_steal_s() -> tuple[float, float]:
        # cpu  user nice system idle iowait irq softirq steal ...: busy is all but idle, iowait and steal
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        tick = os.sysconf("SC_CLK_TCK")
        return (sum(fields) - fields[3] - fields[4] - fields[7]) / tick, fields[7] / tick

    @staticmethod
    def _own_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime


def bench(model, batch: int, new_tokens: int, repeats: int, arms: tuple[str, ...] = ARMS) -> dict[str, float]:
    """Median tokens/s of each arm, median per-round ratios to generate, and whether fast == generic samples."""
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
    tokens: dict[str, torch.Tensor] = {}

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
        tokens[name] = engines[name].generate(prompts, params).tokens_BT
        assert tokens[name].shape == (batch, new_tokens)

    runs = {"fast": lambda: run_engine("fast"), "generic": lambda: run_engine("generic"), "generate": run_generate}
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    same = True
    for r in range(repeats):
        for name in arms[r % len(arms) :] + arms[: r % len(arms)]:  # rotate: no arm always runs first or last
            t0 = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - t0)
        if "fast" in tokens and "generic" in tokens:  # equally seeded: the r-th calls sample alike
            same &= torch.equal(tokens["fast"], tokens["generic"])
    out = {name: batch * new_tokens / statistics.median(s) for name, s in seconds.items()}
    for a, b in [("fast", "generate"), ("generic", "generate"), ("fast", "generic")]:
        if a in seconds and b in seconds:  # per-round ratio of speeds = ratio of the round's times
            out[f"{a}/{b}"] = statistics.median(tb / ta for ta, tb in zip(seconds[a], seconds[b]))
    out["same_samples"] = float(same) if "fast" in tokens and "generic" in tokens else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7, help="rounds; each runs every arm once")
    parser.add_argument("--sizes", nargs="+", default=["student", "teacher"], choices=["student", "teacher"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument(
        "--model-dir", default=None, help="a saved model instead of the random demo-sized ones"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} batch={args.batch} new_tokens={args.new_tokens} (medians of {args.repeats} rounds)")
    for size in ["model"] if args.model_dir else args.sizes:
        model = model_for(size, args.model_dir)
        n_params = sum(p.numel() for p in model.parameters())
        with LoadMeter() as load:
            res = bench(model, args.batch, args.new_tokens, args.repeats, tuple(args.arms))
        figures = [f"{name} {res[name]:7.0f} tok/s" for name in args.arms]
        figures += [f"{key} {value:.2f}x" for key, value in res.items() if "/" in key]
        if res["same_samples"] == res["same_samples"]:  # not NaN: both engine arms ran
            figures.append(f"same samples fast vs generic: {'yes' if res['same_samples'] else 'NO'}")
        figures.append(
            f"load avg {load.loadavg[0]:.1f}->{load.loadavg[1]:.1f}, other processes used "
            f"{load.other_cores:.2f} of {os.cpu_count()} cores, steal {load.steal_cores:.2f} cores"
        )
        print(f"{size:8s} {n_params / 1e6:.2f}M params: " + " | ".join(figures), flush=True)


if __name__ == "__main__":
    main()
