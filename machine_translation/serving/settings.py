"""The service's limits and options: one frozen dataclass, checked when built."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    """What ``serve`` accepts and how it batches.

    >>> ServeSettings(max_characters=0)
    Traceback (most recent call last):
    ...
    ValueError: max_characters=0: must be at least 1
    """

    max_characters: int = 5000  # per text (LibreTranslate's char_limit)
    max_texts: int = 128  # texts per request when q is a list (its batch_limit)
    max_body_bytes: int = 1_000_000  # a larger request body is refused with 413
    batch_wait_ms: float = 5.0  # how long a batch waits for more requests
    max_batch_tokens: int = 4096  # source tokens gathered into one batch at most
    api_key: str | None = None  # when set, every request must carry it (api_key)

    def __post_init__(self) -> None:
        for name in ("max_characters", "max_texts", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        if self.max_batch_tokens < 1:
            raise ValueError(
                f"max_batch_tokens={self.max_batch_tokens}: must be at least 1"
            )
        if self.batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms={self.batch_wait_ms}: must be >= 0")
        if self.api_key == "":
            raise ValueError("api_key is empty: give a key, or none to allow all")
