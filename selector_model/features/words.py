"""What a word of a request is, for the keyword hints and the word hashes alike.

Words are what is left of a lower-cased text between whitespace and the separators
(ASCII punctuation, digits, newline, tab). Approximate by design; what matters is that
training and serving read them the same way, here.

The separators are made spaces on the UTF-8 bytes (a table lookup per byte, where
str.translate with a dict looks each character up in the dict), with every other ASCII
whitespace (a no-op for str.split).
"""

from __future__ import annotations

import string

SEPARATORS = string.punctuation + string.digits + "\n\t"
_TO_SPACE_BYTES = bytes(
    0x20 if chr(i) in SEPARATORS or chr(i).isspace() else i for i in range(128)
) + bytes(range(128, 256))


def utf8(text: str) -> bytes:
    # surrogatepass: a str may hold a lone surrogate, and reading it must not raise.
    return text.encode("utf-8", "surrogatepass")


def spaced_utf8(text: str) -> bytes:
    """`text` as UTF-8 with every separator and ASCII whitespace made a space."""
    return utf8(text).translate(_TO_SPACE_BYTES)


def spaced(text: str) -> str:
    """`text` with every separator and ASCII whitespace made a space."""
    return spaced_utf8(text).decode("utf-8", "surrogatepass")
