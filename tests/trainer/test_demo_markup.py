"""`opdwatch demo` prints run names and paths as text: rich markup in them is neither applied nor obeyed."""

from __future__ import annotations

import io
import re

from rich.console import Console

from opdwatch.trainer.recipes.demo.demo import run_demo

from .conftest import TINY

SGR = re.compile(r"\x1b\[[0-9;]*m")


def test_demo_prints_markup_in_paths_verbatim(tmp_path, model_cache) -> None:
    out = io.StringIO()
    parent = tmp_path / "[link=https://evil.example]demo[/link]"  # the "/" make subdirectories: still markup
    plain, stable = run_demo(output_dir=str(parent), seed=1, threads=1, steps=1, cache_dir=str(model_cache),
                             overrides=[*TINY, "val.every=0"],
                             console=Console(file=out, width=400, force_terminal=True))  # colour, hyperlinks on
    text = out.getvalue()
    assert "\x1b]8;" not in text  # no terminal hyperlink
    assert f"opdwatch analyze {plain} {stable}" in SGR.sub("", text)
