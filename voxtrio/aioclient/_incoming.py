"""This client's names for what the server sends about words: WordTimings and Word.

(It handles every message a server sends, voice replies included: the protocol's
SERVER_MESSAGE_TYPES, decoded by `voxtrio.protocol._client_connection`.)
"""

from __future__ import annotations

from voxtrio.protocol._messages import Words, WordTime

# A sentence's word timings, and one word of them.
WordTimings = Words
Word = WordTime
