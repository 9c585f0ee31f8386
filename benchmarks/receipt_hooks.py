"""Receipt hooks for the receiver benchmarks.

`sms-blaster receive --hook benchmarks.receipt_hooks:slow`, with the repository root on
PYTHONPATH so that the module imports.
"""

from __future__ import annotations

import asyncio
from typing import Any

PROCESSING_S = 0.1


async def slow(receipt: dict[str, Any]) -> None:
    """Processing that takes 100 ms a receipt (a lookup, a call to another service)."""
    await asyncio.sleep(PROCESSING_S)
