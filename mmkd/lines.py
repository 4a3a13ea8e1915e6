"""Lines of a text file, as files mean them: split at "\n" only (a "\r" before it is dropped).

`str.splitlines` also splits at U+2028/U+2029 (line and paragraph separators), U+0085, \v, \f and
\x1c-\x1e, which occur inside real sentences (web text, PDF extractions): reading a file of pairs
with it would cut a pair in two and shift every pair after it."""

from __future__ import annotations


def split_lines(text: str) -> list[str]:
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]
