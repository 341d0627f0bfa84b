"""``recency``: the most recent profile items first, as the official ranking orders them.

The official code sorts the profile by ``tuple(map(int, str(date).split("-")))`` (a stable ascending
sort) and takes the last k, reversed. Reversing the whole stably sorted profile gives every k at once:
most recent first, and among equal dates the later profile position first.
"""

from __future__ import annotations

import numpy as np

from lamp_fid.data.example import Example
from lamp_fid.data.reader import parse_date
from lamp_fid.errors import LaMPDataError
from lamp_fid.retrieval.base import Retriever


class RecencyRetriever(Retriever):
    """Most recent first; a missing or unparseable ``date`` is a LaMPDataError."""

    name = "recency"

    def rank(self, example: Example) -> np.ndarray:
        keys = []
        for item in example.profile:
            if item.get("date") is None:
                raise LaMPDataError(self.source, f"profile item {item.get('id')!r} has no date "
                                    "(the recency retriever needs one on every item)",
                                    record_id=example.id, field="date")
            try:
                keys.append(parse_date(item["date"]))
            except ValueError:
                raise LaMPDataError(self.source, f"profile item {item.get('id')!r} has an unparseable "
                                    f"date {item['date']!r} (expected YYYY-MM-DD)",
                                    record_id=example.id, field="date") from None
        ascending = sorted(range(len(keys)), key=keys.__getitem__)  # Python's sort is stable
        return np.asarray(ascending[::-1], dtype=np.int64)
