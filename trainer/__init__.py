"""opdwatch's on-policy distillation trainer (needs the `train` extra: torch, transformers, tokenizers, math-verify).

Entry points: `trainer.loop.train(config)`, `trainer.demo.run_demo(...)`, `trainer.cli_entry.train_main/demo_main`.
See docs/trainer.md. Importing this package has no side effects and does not import torch.
"""
