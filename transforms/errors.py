"""The one exception that carries a reject reason: every stage raises a subclass of it and every builder turns it
into a reject row (`pipeline.emit.rejected`) with the same `reason` and `detail`."""
from __future__ import annotations


class ReasonError(ValueError):
    """An input that cannot be used. `reason` is the reject reason (snake_case), `detail` says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
