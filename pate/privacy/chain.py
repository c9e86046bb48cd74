"""An HMAC chain over JSON lines: what makes the ledger and the spend log tamper-evident (no I/O).

Each line is a JSON object ending in ``"mac"``: HMAC-SHA256, under a secret key, of the line's
content and of the previous line's MAC. A line edited, dropped, repeated or moved breaks the chain
from there on; a chain cut after a whole line stays valid, so each log keeps its length elsewhere
(the ledger in the run's manifest, the spend log in its head file).
"""
from __future__ import annotations

import hashlib
import hmac
import json
from typing import Sequence


class ChainError(ValueError):
    """A line of the chain is damaged; ``number`` is its 1-based line number."""

    def __init__(self, number: int, why: str):
        super().__init__(f"line {number} {why}")
        self.number, self.why = number, why


def _body(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def mac(key: bytes, previous: str, body: str) -> str:
    return hmac.new(key, f"{previous}\n{body}".encode(), hashlib.sha256).hexdigest()


def encode(key: bytes, previous: str, objs: Sequence[dict]) -> tuple[str, str]:
    """The lines of ``objs`` (each with its MAC, chained from ``previous``) and the last MAC."""
    lines = []
    for obj in objs:
        body = _body(obj)
        previous = mac(key, previous, body)
        lines.append(f'{body[:-1]},"mac":"{previous}"}}\n')
    return "".join(lines), previous


def verify(lines: Sequence[str], key: bytes) -> tuple[list[dict], list[str]]:
    """(objects without their MACs, the MAC after each line), or ChainError at the first bad line."""
    objs, macs, previous = [], [], ""
    for number, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ChainError(number, f"is not JSON ({exc.msg})") from None
        except RecursionError:
            raise ChainError(number, "is nested too deeply to be a log line") from None
        found = obj.pop("mac", None) if isinstance(obj, dict) else None
        if not isinstance(found, str) or not hmac.compare_digest(found, mac(key, previous, _body(obj))):
            raise ChainError(number, "fails its integrity check")
        objs.append(obj)
        macs.append(found)
        previous = found
    return objs, macs
