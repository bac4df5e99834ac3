"""Objectives: the OPD estimators (sampled token, top-K), sequence and teacher scoring, the golden SFT term."""
