"""The ITL split (DESIGN.md, "ITL split"), one rule for the server's statistics and the toolkit's client.

One sample per gap between two chunks; a gap ending in a chunk of k > 1 tokens is k samples of gap/k, so
a response's samples follow its tokens, not its chunks.
"""

from __future__ import annotations

from collections.abc import Iterable


def split_gaps(gaps: Iterable[float], tokens: Iterable[int]) -> list[float]:
    """ITL samples from the gaps between chunks and the token counts of the chunks each gap ends in (in
    the gaps' unit; pairs up to the shorter of the two)."""
    out: list[float] = []
    for gap, k in zip(gaps, tokens, strict=False):
        if k > 1:
            out.extend([gap / k] * k)
        else:
            out.append(gap)
    return out
