"""Data and models: the task's prompts and solutions, model/tokenizer loading, EOS canonicalisation, special tokens."""
