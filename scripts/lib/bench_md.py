"""What the benchmark reports share: the `key=value` results files, the text table and
BENCHMARKS.md's generated blocks. Standard library only."""

from __future__ import annotations

import os


def append(path: str, pairs: list[tuple[str, object]]) -> None:
    """Adds `key=value` lines to a results file."""
    with open(path, "a", encoding="utf-8") as f:
        for k, v in pairs:
            f.write(f"{k}={v}\n")


def read_results(path: str) -> dict[str, str]:
    """A results file's `key=value` lines (the last value of a key wins)."""
    out: dict[str, str] = {}
    for line in open(path, encoding="utf-8"):
        if "=" in line:
            k, v = line.rstrip("\n").split("=", 1)
            out[k] = v
    return out


def write_generated_block(path: str, section: str, begin: str, end: str, block: str) -> None:
    """Puts `block` between the markers `begin` and `end` in the file at `path`: in place of the
    old block, else right under the heading `section`, else in a new section at the end."""
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmarks\n"
    generated = f"{begin}\n{block}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + generated + text[text.index(end) + len(end):]
    elif section in text:
        at = text.index(section) + len(section)
        text = text[:at] + "\n\n" + generated + "\n" + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n\n" + generated + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def render_text(rows) -> str:
    """Rows as aligned columns, the first one a header underlined with dashes."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
