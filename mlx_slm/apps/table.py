"""Tables: plain text for the terminal (with wrapped text columns), and Markdown."""

import textwrap


def render_table(headers: list[str], rows: list[list[str]], right: frozenset[int] = frozenset(),
                 wrap: dict[int, int] | None = None, max_lines: int = 0) -> str:
    """Columns separated by two spaces; `right` aligns numbers; `wrap` column -> width.

    A wrapped cell longer than `max_lines` lines (when set) ends in an ellipsis.
    """
    wrap = wrap or {}
    cells = [[_lines(cell, wrap.get(i), max_lines) for i, cell in enumerate(row)] for row in rows]
    widths = [
        max([len(header)] + [len(line) for row in cells for line in row[i]])
        for i, header in enumerate(headers)
    ]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if i in right else v.ljust(w)
                 for i, (v, w) in enumerate(zip(values, widths))]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    for row in cells:
        for k in range(max(len(c) for c in row)):
            out.append(line([c[k] if k < len(c) else "" for c in row]))
    return "\n".join(out)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns, readable as plain text too."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *map(line, rows)])


def _lines(cell: str, width: int | None, max_lines: int) -> list[str]:
    if width is None:
        return [cell]
    lines = textwrap.wrap(" ".join(cell.split()), width) or [""]
    if max_lines and len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: width - 1] + "…"
    return lines
