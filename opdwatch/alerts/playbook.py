"""The playbook (docs/playbook.md) as data: one :class:`Play` per signal family, the text alerts quote.

    play = playbook()["rollouts"]
    play.do, play.look_at                  # the **Do:** and **Look at:** paragraphs, word for word

docs/playbook.md is the single source. An installed package has no docs folder, so its text is carried in
the generated module ``opdwatch/alerts/_playbook.py``; regenerate it after editing the doc with

    python -m opdwatch.alerts.playbook docs/playbook.md

(tests/test_alerts_playbook.py fails while the two differ).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from opdwatch.errors import OpdwatchError

_HEADING = re.compile(r"^## `(?P<family>[a-z_]+)`: (?P<title>.+)$")
_FIELDS = {"Signals": "signals", "Means": "means", "Do": "do", "Look at": "look_at"}  # paragraph -> attribute
_PARAGRAPH = re.compile(r"^\*\*(?P<name>[A-Za-z ]+):\*\* (?P<text>.*)$", re.S)
GENERATED = Path(__file__).with_name("_playbook.py")


@dataclass(frozen=True)
class Play:
    family: str    # signal family (opdwatch.detector.signals.SignalSpec.family)
    title: str     # the section heading after the family name
    signals: str   # which signals belong to it
    means: str     # what the signals say is happening
    do: str        # what to do (quoted by every alert of this family)
    look_at: str   # where to look in the dashboard (quoted too)


def parse_playbook(text: str) -> dict[str, Play]:
    """The sections of a playbook document by family; a one-line OpdwatchError names a malformed section."""
    plays: dict[str, Play] = {}
    for block in re.split(r"^(?=## )", text, flags=re.M)[1:]:
        head, _, body = block.partition("\n")
        m = _HEADING.match(head.strip())
        if m is None:
            continue  # a section of another kind (none today)
        fields = {}
        for para in re.split(r"\n\s*\n", body.strip()):
            p = _PARAGRAPH.match(para.strip())
            if p and p["name"] in _FIELDS:
                fields[_FIELDS[p["name"]]] = " ".join(p["text"].split())  # paragraphs as one line each
        missing = sorted(set(_FIELDS.values()) - set(fields))
        if missing:
            raise OpdwatchError(f"playbook section {m['family']!r}: missing {', '.join(missing)}")
        plays[m["family"]] = Play(family=m["family"], title=m["title"], **fields)
    if not plays:
        raise OpdwatchError("playbook: no ## `family`: sections found")
    return plays


@cache
def playbook() -> dict[str, Play]:
    """The playbook the alerts quote (from the generated copy of docs/playbook.md)."""
    from opdwatch.alerts._playbook import PLAYBOOK_MD

    return parse_playbook(PLAYBOOK_MD)


def render_module(text: str) -> str:
    """The source of ``_playbook.py`` carrying ``text``."""
    return ('# ruff: noqa: E501\n"""Generated from docs/playbook.md by `python -m opdwatch.alerts.playbook '
            'docs/playbook.md`: do not edit."""\n\nPLAYBOOK_MD = ' + repr(text) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m opdwatch.alerts.playbook docs/playbook.md", file=sys.stderr)
        return 2
    text = Path(argv[0]).read_text(encoding="utf-8")
    parse_playbook(text)  # refuse to generate from a malformed playbook
    GENERATED.write_text(render_module(text), encoding="utf-8")
    print(f"wrote {GENERATED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
