"""The studio's limits for running it for others, read from environment variables.

Pure Python (no gradio). Every variable is documented in the README ("Running it for others");
a bad value stops the app at start-up with a message naming the variable and the fix, rather
than being ignored.

    FT_MAX_UPLOAD_MB   largest accepted upload, in MB (default 100; decimals allowed)
    FT_MAX_STEPS       demo mode: cap on optimizer steps per run (default 0 = no cap)
    FT_MAX_ROWS        demo mode: cap on dataset rows per run (default 0 = no cap)
    FT_AUTH            login for a hosted instance, "user:password" (default: no login)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os

from ft_engine.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 100.0
LOGIN_FAILURE_DELAY_S = 1.0


def max_upload_bytes() -> int:
    """FT_MAX_UPLOAD_MB in bytes (1 MB = 1,000,000 bytes, as Gradio counts)."""
    raw = os.environ.get("FT_MAX_UPLOAD_MB", "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MAX_UPLOAD_MB
    except ValueError:
        mb = -1.0
    if not mb > 0:
        raise UserError(f"FT_MAX_UPLOAD_MB must be a number of megabytes > 0 (e.g. 100), got {raw!r}")
    return int(mb * 1_000_000)


def _cap(name: str) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise UserError(f"{name} must be a whole number >= 0 (0 = no cap), got {raw!r}")
    return int(raw)


def max_steps_cap() -> int:
    """FT_MAX_STEPS: most optimizer steps a studio run may take (0 = no cap)."""
    return _cap("FT_MAX_STEPS")


def max_rows_cap() -> int:
    """FT_MAX_ROWS: most dataset rows a studio run may train on (0 = no cap)."""
    return _cap("FT_MAX_ROWS")


def login() -> tuple[str, str] | None:
    """FT_AUTH="user:password" → (user, password); unset → None (no login)."""
    raw = os.environ.get("FT_AUTH", "")
    if not raw:
        return None
    user, sep, password = raw.partition(":")  # the password may itself contain ':'
    if not sep or not user.strip() or not password:
        raise UserError("FT_AUTH must be user:password (both non-empty), e.g. FT_AUTH='studio:a-long-passphrase'")
    return user.strip(), password


class LoginCheck:
    """The sign-in check Gradio calls for every attempt: pass `launch(auth=LoginCheck(u, p).check)`.

    Gradio's own (user, password) check answers as fast as it is asked, so a guesser may try
    thousands of passwords a second. Here attempts are checked one at a time and a wrong one
    holds the line for `failure_delay_s`: at most one guess per delay, however many connections
    a guesser opens. The price: while someone is guessing, a right password waits its turn.
    Async, because Gradio calls a plain function on its event loop, where sleeping would stop
    every other request."""

    def __init__(self, user: str, password: str, failure_delay_s: float = LOGIN_FAILURE_DELAY_S):
        self._user, self._password = user.encode(), password.encode()
        self.failure_delay_s = failure_delay_s
        self.failures = 0
        self._one_at_a_time = asyncio.Lock()

    async def check(self, username: str, password: str) -> bool:
        # A method, not __call__: Gradio awaits auth only if inspect.iscoroutinefunction(auth),
        # which is False for an object with an async __call__; it would take the coroutine
        # object it got back for a yes and let every password in.
        async with self._one_at_a_time:
            # both compared in constant time, and both always compared: timing tells nothing
            ok = hmac.compare_digest(username.encode(), self._user) & hmac.compare_digest(password.encode(),
                                                                                          self._password)
            if not ok:
                self.failures += 1
                log.warning("failed sign-in #%d (user %r); next attempt in %.1f s", self.failures, username[:40],
                            self.failure_delay_s)
                await asyncio.sleep(self.failure_delay_s)
            return ok


def describe_bytes(n: int) -> str:
    return f"{n / 1_000_000:.3g} MB" if n >= 100_000 else f"{n / 1000:.3g} kB"
