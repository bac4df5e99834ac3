"""`RolloutEngine` on vLLM (optional extra `opdwatch[vllm]`; written against vLLM 0.33's offline `LLM` API).

    engine = VLLMEngine.launch(student_path, student=model, stop_ids=mapping.student_stop_ids, pad_id=pad)
    batch = engine.generate(prompt_ids, SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=4096))

What maps to what:
- our SamplingParams -> `vllm.SamplingParams(n=1, temperature, top_p, max_tokens=max_new_tokens,
  stop_token_ids=<the run's canonical stop ids>, logprobs=0, detokenize=False, skip_special_tokens=False,
  seed=<per-row seed>)`; `logprobs=0` returns the log-prob of the sampled token only;
- the LLM must be built with `logprobs_mode="processed_logprobs"`, so those log-probs are under the temperature /
  top-p distribution actually sampled from (pi_old of the PPO ratio), like `HFEngine`; we refuse otherwise;
- `RequestOutput.outputs[0]` (CompletionOutput): `token_ids` (the stop token is included, as in vLLM's
  `check_stop`), `logprobs[pos][token_id].logprob`, `finish_reason` "stop" -> "eos", "length" -> "length";
  "abort"/"error"/"repetition", or a "stop" on a token that is not one of the run's stop ids, raise;
- weights: before each `generate`, if the trained student changed since the last sync (torch's in-place version
  counters of its parameters moved), its full state (FSDP shards gathered one tensor at a time) is pushed with
  `llm.collective_rpc("reload_weights", kwargs={"weights_iterator": [...], "is_checkpoint_format": True})`,
  vLLM's in-place reload that runs the model's own `load_weights` (HF checkpoint names), then
  `llm.reset_prefix_cache()` so no KV block computed with the old weights is reused.

Everything except `launch` and `vllm.LLM` itself is plain Python and is tested without vLLM on objects shaped
like vLLM's (tests/trainer/test_vllm_engine.py); see docs/scale.md for what was and was not run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from opdwatch.errors import OpdwatchError
from opdwatch.trainer.parallel.distributed import full_state_items
from opdwatch.trainer.rollout.engine import FinishReason, RolloutBatch, RowIndex, SamplingParams

FINISH_MAP: dict[str, FinishReason] = {"stop": "eos", "length": "length"}
WeightSource = Callable[[], Iterable[tuple[str, torch.Tensor]]]


def vllm_sampling_kwargs(params: SamplingParams, *, stop_ids: Sequence[int], seed: int | None) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one rollout (n=1: every row is its own request)."""
    return {"n": 1, "temperature": float(params.temperature), "top_p": float(params.top_p),
            "max_tokens": int(params.max_new_tokens), "stop_token_ids": [int(s) for s in stop_ids],
            "ignore_eos": False, "logprobs": 0, "detokenize": False, "skip_special_tokens": False, "seed": seed}


def _sampled_logprob(entry: Any, token: int, position: int) -> float:
    """The sampled token's log-prob from one position of `CompletionOutput.logprobs` (dict[int, Logprob])."""
    if entry is None or token not in entry:
        raise OpdwatchError(f"vLLM returned no log-prob for the sampled token at position {position} "
                            "(build the LLM with logprobs_mode='processed_logprobs' and request logprobs=0)")
    value = entry[token]
    return float(getattr(value, "logprob", value))


def to_rollout_batch(outputs: Sequence[Any], *, pad_id: int, stop_ids: Sequence[int]) -> RolloutBatch:
    """Convert `LLM.generate` results (one RequestOutput per prompt row, in order) into a `RolloutBatch`."""
    stops = set(int(s) for s in stop_ids)
    rows, logps, finish = [], [], []
    for i, request in enumerate(outputs):
        if len(request.outputs) != 1:
            raise OpdwatchError(f"vLLM request {i}: expected 1 completion (n=1), got {len(request.outputs)}")
        out = request.outputs[0]
        tokens = [int(t) for t in out.token_ids]
        reason = out.finish_reason
        if reason not in FINISH_MAP:
            raise OpdwatchError(f"vLLM request {i} finished with {reason!r}; only 'stop' and 'length' are rollouts")
        if reason == "stop" and (not tokens or tokens[-1] not in stops):
            last = tokens[-1] if tokens else None
            raise OpdwatchError(f"vLLM request {i} stopped on token {last}, which is not a run stop id "
                                f"{sorted(stops)} (add it to the EOS mapping or fix generation_config)")
        if out.logprobs is None or len(out.logprobs) != len(tokens):
            raise OpdwatchError(f"vLLM request {i}: {0 if out.logprobs is None else len(out.logprobs)} log-prob "
                                f"entries for {len(tokens)} tokens (request logprobs=0)")
        rows.append(tokens)
        logps.append([_sampled_logprob(out.logprobs[p], t, p) for p, t in enumerate(tokens)])
        finish.append(FINISH_MAP[reason])
    B, T = len(rows), max([1, *map(len, rows)])
    tokens_BT = torch.full((B, T), pad_id, dtype=torch.long)
    logp_BT = torch.zeros((B, T), dtype=torch.float32)
    for b, (toks, lps) in enumerate(zip(rows, logps)):
        tokens_BT[b, :len(toks)] = torch.tensor(toks, dtype=torch.long)
        logp_BT[b, :len(lps)] = torch.tensor(lps, dtype=torch.float32)
    lengths_B = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return RolloutBatch(tokens_BT=tokens_BT, logp_BT=logp_BT, lengths_B=lengths_B, finish_reasons=finish)


def launch_kwargs(world_size: int, **kwargs: Any) -> dict[str, Any]:
    """Arguments of `vllm.LLM`: processed log-probs always; under torchrun (world_size > 1) one colocated engine
    per rank through vLLM's torchrun-compatible "external_launcher" executor, as data-parallel replicas
    (vLLM 0.33 multiplies its world size by data_parallel_size for that executor and takes the rank from RANK).
    Explicit kwargs win over these defaults."""
    out: dict[str, Any] = {"logprobs_mode": "processed_logprobs"}
    if world_size > 1:
        out.update(distributed_executor_backend="external_launcher", tensor_parallel_size=1,
                   data_parallel_size=world_size)
    return {**out, **kwargs}


def parameter_version(model: torch.nn.Module) -> int:
    """Sum of the parameters' in-place version counters: changes whenever an optimizer step updates a weight."""
    return sum(int(p._version) for p in model.parameters())


def student_weights(model: torch.nn.Module) -> WeightSource:
    """Weight source for the sync: the student's parameters (not buffers) as full tensors under HF names."""
    names = {name for name, _ in model.named_parameters()}

    def items() -> Iterable[tuple[str, torch.Tensor]]:
        return ((n, t) for n, t in full_state_items(model) if n in names)

    return items


class VLLMEngine:
    """`RolloutEngine` over a `vllm.LLM` (or any object with its `generate`/`collective_rpc`/`reset_prefix_cache`).

    `student` is the trained model; its weights are pushed into vLLM before a `generate` whenever they changed.
    `seed` makes every request's sampling reproducible (global row i of call c gets seed + c * 1_000_003 + i).
    """

    def __init__(self, llm: Any, *, stop_ids: Sequence[int], pad_id: int, student: torch.nn.Module | None = None,
                 weights: WeightSource | None = None, seed: int | None = None,
                 sampling_params_cls: type | None = None, check_logprobs_mode: bool = True,
                 synced: bool = True) -> None:
        if not stop_ids:
            raise OpdwatchError("the vLLM engine needs at least one stop id")
        mode = getattr(getattr(llm, "model_config", None), "logprobs_mode", None)
        if check_logprobs_mode and mode != "processed_logprobs":
            raise OpdwatchError(f"vLLM logprobs_mode is {mode!r}: build the LLM with logprobs_mode="
                                "'processed_logprobs' so rollout log-probs are those of the sampled distribution")
        self.llm = llm
        self.stop_ids = tuple(int(s) for s in stop_ids)
        self.pad_id = pad_id
        self.student = student
        self.weights = weights or (student_weights(student) if student is not None else None)
        self.seed = seed
        self.calls = 0
        self.syncs = 0
        # synced: vLLM loaded the same files as the student; False (e.g. after an SFT warm-up in memory) makes the
        # first generate push the weights
        self._synced_version: int | None = parameter_version(student) if student is not None and synced else None
        self._params_cls = sampling_params_cls

    @classmethod
    def launch(cls, model_path: str, *, stop_ids: Sequence[int], pad_id: int, student: torch.nn.Module | None = None,
               seed: int = 0, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.4, synced: bool = True,
               **llm_kwargs: Any) -> VLLMEngine:
        """Start a colocated `vllm.LLM` for `model_path` (GPU only). Extra kwargs go to `vllm.LLM`/EngineArgs."""
        try:
            from vllm import LLM
        except ImportError as exc:
            raise OpdwatchError("vLLM is not installed: pip install 'opdwatch[vllm]' (needs a CUDA GPU)") from exc
        kwargs = launch_kwargs(int(os.environ.get("WORLD_SIZE", "1")), model=model_path, dtype=dtype, seed=seed,
                               gpu_memory_utilization=gpu_memory_utilization, **llm_kwargs)
        if kwargs.get("distributed_executor_backend") == "external_launcher":
            # vLLM asserts this for the external launcher; in-process engines also take weight tensors directly
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        return cls(LLM(**kwargs), stop_ids=stop_ids, pad_id=pad_id, student=student, seed=seed, synced=synced)

    def _sampling_params(self, params: SamplingParams, n_rows: int, rows: RowIndex | None) -> list[Any]:
        cls = self._params_cls
        if cls is None:
            from vllm import SamplingParams as cls  # noqa: N813 - vLLM's class, imported only when used
        # seeds follow the global rollout number, so a rollout gets the same seed whichever rank samples it
        numbers = range(n_rows) if rows is None else rows.numbers
        if len(numbers) != n_rows:
            raise ValueError(f"rows: {len(numbers)} row numbers for {n_rows} prompts")
        seeds = [None if self.seed is None else self.seed + self.calls * 1_000_003 + i for i in numbers]
        return [cls(**vllm_sampling_kwargs(params, stop_ids=self.stop_ids, seed=s)) for s in seeds]

    def sync_weights(self, *, force: bool = False) -> bool:
        """Push the student's weights into vLLM if they changed (or `force`). Returns whether a sync happened."""
        if self.weights is None:
            return False
        version = None if self.student is None else parameter_version(self.student)
        if not force and version is not None and version == self._synced_version:
            return False
        items = list(self.weights())
        if not items:
            raise OpdwatchError("weight sync: the student has no parameters to send")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self._synced_version = version
        self.syncs += 1
        return True

    def generate(
        self, prompt_ids: list[list[int]], params: SamplingParams, *, rows: RowIndex | None = None
    ) -> RolloutBatch:
        self.sync_weights()
        prompts = [{"prompt_token_ids": list(map(int, p))} for p in prompt_ids]  # vllm.inputs.TokensPrompt
        outputs = self.llm.generate(prompts, self._sampling_params(params, len(prompts), rows), use_tqdm=False)
        self.calls += 1
        return to_rollout_batch(outputs, pad_id=self.pad_id, stop_ids=self.stop_ids)
