"""The CPU demo recipe: its char tokenizer, tiny Llama models (trained on first use, cached), presets and runner."""
