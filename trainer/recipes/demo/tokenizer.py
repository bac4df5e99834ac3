"""Character-level tokenizer for the embedded demo task.

Built with the `tokenizers` library and wrapped as a `PreTrainedTokenizerFast`, then saved to a local
directory so that the demo goes through the same `AutoTokenizer.from_pretrained` path as a real model. One
token per character
makes per-token character offsets exact, which the recorder uses to map repetitive text back to tokens.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
# Every character the synthetic task can produce: `Q:14+3-5=?` and `14+3=17. 17-5=12. \boxed{12}`.
DEMO_CHARS = "0123456789+-=?Q:. \\boxed{}"


def build_char_tokenizer(chars: str = DEMO_CHARS) -> PreTrainedTokenizerFast:
    """A tokenizer with one id per character plus <pad>=0, <eos>=1, <unk>=2."""
    specials = [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(chars), key=chars.index))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(
        Regex("."), behavior="isolated"
    )  # every char is its own word
    backend.decoder = decoders.Fuse()  # join characters back without spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN
    )


def save_char_tokenizer(path: Path) -> None:
    build_char_tokenizer().save_pretrained(str(path))
