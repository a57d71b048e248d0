"""Retrieval datastore: continuations of the current context found in code that already exists.

Sources (the workspace's files, a general code corpus, the model's own generations from the
draft head's build, the current document) each answer
"what followed the longest suffix of this context, and how often"; a :class:`Datastore`
merges them with per-source weights for the speculative decoder.  No torch here:
tokenization is injected as an ``encode`` callable.
"""

from .sources import ContextSource, Datastore, IndexSource
from .types import Candidate, DraftSource

__all__ = ["Candidate", "ContextSource", "Datastore", "DraftSource", "IndexSource"]
