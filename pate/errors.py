"""The one base class of errors a user can cause and fix.

The CLI turns every ``PateError`` into one line and exit code 2 (never a traceback); everything
else is a bug and keeps its traceback. The pure privacy layer (``pate.privacy``) imports nothing
above it, so its own errors are plain ``ValueError`` subclasses that stages translate.
"""
from __future__ import annotations


class PateError(Exception):
    """A problem a user can fix: bad config, missing data, a damaged or foreign artifact."""
