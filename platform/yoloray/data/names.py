"""Names -> keys: names that are not UTF-8 kept losslessly, repeated names made unique (README "Keys").

`escape_name`: a name is taken as the bytes it is stored as (a local file name as the OS holds it, a tar or zip
member name as the archive holds it). Valid UTF-8 is kept as it is, except a backslash, which becomes `\\\\`; every
byte that is not part of valid UTF-8 becomes `\\xHH` (two lower-case hex digits). The mapping is one-to-one, and
`unescape_name` gives back the exact bytes, so a key always leads back to its file or member.

`unique_names`: the first occurrence of a name keeps it; a later one becomes `NAME#dup=N` with N its occurrence
number (2, 3, ...), or the next free N should a real name already be spelled that way. Deterministic: the same
archive (file order) always gives the same keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ESCAPED = re.compile(r"\\(\\|x[0-9a-f]{2})")
_RAW_BYTE = re.compile("[\udc80-\udcff]")


def raw_bytes(name: str | bytes) -> bytes:
    """The bytes of a name: bytes as they are; a str from the OS or tarfile (undecodable bytes held as lone
    surrogates, Python's 'surrogateescape') encoded back exactly."""
    return name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")


def escape_name(name: str | bytes) -> str:
    """A valid-UTF-8 string for any name (see the module docstring)."""
    text = raw_bytes(name).decode("utf-8", "surrogateescape").replace("\\", "\\\\")
    return _RAW_BYTE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


def unescape_name(key: str) -> bytes:
    """The exact bytes `escape_name` was given."""
    out, pos = bytearray(), 0
    for m in _ESCAPED.finditer(key):
        out += key[pos : m.start()].encode()
        token = m.group(1)
        out += b"\\" if token == "\\" else bytes([int(token[1:], 16)])
        pos = m.end()
    return bytes(out + key[pos:].encode())


def zip_member_name(filename: str, flag_bits: int) -> bytes:
    """The bytes a zip stores as a member's name: zipfile decodes names as cp437 unless the UTF-8 flag (0x800)
    is set, and cp437 maps every byte, so encoding back gives the stored bytes."""
    return filename.encode("utf-8" if flag_bits & 0x800 else "cp437")


class UniqueNames:
    """Called with each name in order, returns it once: repeats become `NAME#dup=N` (see the module docstring)."""

    def __init__(self) -> None:
        self._used: set[str] = set()
        self._seen: dict[str, int] = {}

    def __call__(self, name: str) -> str:
        n = self._seen[name] = self._seen.get(name, 0) + 1
        key = name if n == 1 else f"{name}#dup={n}"
        while key in self._used:
            n = max(n + 1, 2)
            key = f"{name}#dup={n}"
        self._used.add(key)
        return key


def unique_names(names: Iterable[str]) -> list[str]:
    unique = UniqueNames()
    return [unique(name) for name in names]
