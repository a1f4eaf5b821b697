"""Error kinds: the summary's groups of error messages, and the `kind` label of the error metric.

The full message stays in the output row; a kind is a small fixed set, so it can be a metric label.
"""

from __future__ import annotations

import re

# (pattern in the lower-cased message, kind), first match wins
_PATTERNS = (
    (r"cannot open video", "unreadable video"),
    (r"cannot (?:decode|read) video", "corrupt video"),
    (r"\b0 bytes", "empty file"),  # not "20 bytes"
    (r"truncated", "truncated image"),
    (r"over the limit", "too many pixels"),
    (r"unsupported image format", "unsupported format"),
    (r"not a decodable image", "not an image"),
    (r"corrupt", "corrupt image"),
)
UNREADABLE = "unreadable input"
OTHER = "other"
ERROR_KINDS: tuple[str, ...] = (*(kind for _, kind in _PATTERNS), UNREADABLE, OTHER)


def error_kind(message: str) -> str:
    """Group error messages into kinds for the summary (the full message stays in the row)."""
    m = message.lower()
    for pattern, kind in _PATTERNS:
        if re.search(pattern, m):
            return kind
    return UNREADABLE if m else OTHER
