"""opdwatch's on-policy distillation trainer (needs the `train` extra: torch, transformers, tokenizers, math-verify).

Installed as `opdwatch.trainer` from the repository's trainer/ folder. Entry points:
`opdwatch.trainer.loop.loop.train(config)`, `opdwatch.trainer.config.load_config(path, overrides)`,
`opdwatch.trainer.recipes.demo.demo.run_demo(...)`, `opdwatch.trainer.cli_entry.train_main/demo_main`.

    config.py, cli_entry.py  the config tree (torch-free) and what the CLI calls
    configs/                 presets of real runs (HF models, GPUs)
    rollout/                 the RolloutEngine protocol, its registry, HF (+ fast decode) and vLLM engines, sampling
    objectives/              OPD estimators (sampled token, top-K), sequence and teacher scoring, golden SFT
    parallel/                torchrun data parallel, FSDP2
    data/                    the task's data, model/tokenizer loading, EOS canonicalisation, special tokens
    loop/                    train(), the step's phases, controller, watch, validation, checkpoints, components
    recipes/demo/            the CPU demo: char tokenizer, tiny models (trained and cached), presets, runner

Lower layers never import higher ones: config < data, parallel < rollout < objectives < loop < recipes, with
one lazy exception: loop/components.py imports the demo recipe's model builder only when a run names
`models.student/teacher: demo` (real runs never load the recipe).
See docs/trainer.md. Importing this package has no side effects and does not import torch.
"""
