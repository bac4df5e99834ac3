"""Rollout engines: the RolloutEngine protocol, its registry, the HF engine (with its fast decoder), vLLM, sampling."""
