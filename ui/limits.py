"""The studio's limits for running it for others, read from environment variables.

Pure Python (no gradio). Every variable is documented in docs/deploying.md;
a bad value stops the app at start-up with a message naming the variable and the fix, rather
than being ignored.

    FT_MAX_UPLOAD_MB   largest accepted upload, in MB (default 100; decimals allowed)
    FT_MAX_STEPS       demo mode: cap on optimizer steps per run (default 0 = no cap)
    FT_MAX_ROWS        demo mode: cap on dataset rows per run (default 0 = no cap)
    FT_AUTH            login for a hosted instance, "user:password" (default: no login)
    FT_CHAT_*          chat's caps and time limit per answer (the chat section below)
    FT_LEND_HF_TOKEN   may pushes use the server's HF_TOKEN, 0/1 (default: 1 local, 0 shared)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os

from ft_engine.config import ChatLimits
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


# --- chat (issue 11): one visitor's answer must not hold the model for everyone ----------------
#
#     FT_CHAT_MAX_NEW_TOKENS     most tokens one answer may ask for (default and most: 512)
#     FT_CHAT_MAX_CHARS          most characters of a conversation (default 8000; 0 = no cap)
#     FT_CHAT_MAX_PROMPT_TOKENS  most tokens of a conversation's prompt (default 2048; 0 = no cap)
#     FT_CHAT_TIMEOUT_S          seconds one answer may generate (default 60; 0 = no limit)

PAGE_MAX_NEW_TOKENS = 512  # the Chat tab's slider maximum: FT_CHAT_MAX_NEW_TOKENS may only lower it
# SmolLM2's tokenizer writes 3.6 characters a token on the bundled samples and 2.8 on this
# project README as it was then (measured 2026-12-02), so 8,000 characters are 2,200-2,900 tokens: the token cap below
# is what ordinary text meets first, and this one bounds the tokenizer's work before it starts.
DEFAULT_CHAT_MAX_CHARS = 8000
# The bundled model reads 8,192 tokens; 2,048 keep a prompt's first pass to seconds on a CPU.
DEFAULT_CHAT_MAX_PROMPT_TOKENS = 2048
# Issue 11 measured 73 s for one 600-token answer on the 2-core reference CPU (~8 tokens/s): 60 s
# lets a page-capped 512-token answer nearly finish there, and holds no GPU answer back.
DEFAULT_CHAT_TIMEOUT_S = 60.0


def _whole_number(name: str, default: int, low: int, high: int | None, meaning: str) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < low or (high is not None and int(raw) > high):
        span = f"between {low} and {high}" if high is not None else f">= {low}"
        raise UserError(f"{name} must be a whole number {span} ({meaning}), got {raw!r}")
    return int(raw)


def chat_max_new_tokens() -> int:
    """FT_CHAT_MAX_NEW_TOKENS: most tokens one chat answer may ask for, at most the page's 512."""
    return _whole_number("FT_CHAT_MAX_NEW_TOKENS", PAGE_MAX_NEW_TOKENS, 1, PAGE_MAX_NEW_TOKENS,
                         f"tokens per answer; the page offers at most {PAGE_MAX_NEW_TOKENS}")


def chat_max_chars() -> int:
    """FT_CHAT_MAX_CHARS: most characters of a conversation sent to the model (0 = no cap)."""
    return _whole_number("FT_CHAT_MAX_CHARS", DEFAULT_CHAT_MAX_CHARS, 0, None, "characters; 0 = no cap")


def chat_max_prompt_tokens() -> int:
    """FT_CHAT_MAX_PROMPT_TOKENS: most tokens of a conversation's prompt (0 = the model's context)."""
    return _whole_number("FT_CHAT_MAX_PROMPT_TOKENS", DEFAULT_CHAT_MAX_PROMPT_TOKENS, 0, None,
                         "tokens; 0 = only the model's context")


def chat_timeout_s() -> float:
    """FT_CHAT_TIMEOUT_S: seconds one chat answer may generate for (0 = no limit)."""
    raw = os.environ.get("FT_CHAT_TIMEOUT_S", "").strip()
    try:
        seconds = float(raw) if raw else DEFAULT_CHAT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):  # NaN fails this too
        raise UserError(f"FT_CHAT_TIMEOUT_S must be a number of seconds >= 0 (e.g. 60; 0 = no limit), got {raw!r}")
    return seconds


def chat_limits() -> ChatLimits:
    """Every FT_CHAT_* limit as the engine's ChatLimits; a bad value raises UserError naming it."""
    return ChatLimits(max_new_tokens=chat_max_new_tokens(), max_chars=chat_max_chars(),
                      max_prompt_tokens=chat_max_prompt_tokens(), max_time_s=chat_timeout_s())


# --- who the studio serves (issue 11): the owner's token and memory are not lent to strangers --
#
#     FT_LEND_HF_TOKEN   1 = a push whose token field is empty uses the server's HF_TOKEN; 0 = never
#                        (default: 1 on a local single-user instance, 0 on a shared one; on a shared
#                        one it is lent only to signed-in callers, so 1 there needs FT_AUTH)
#
# Where the memory forecast refuses a run, "start anyway" is off in demo mode and on a shared
# instance without login (start_anyway_refusal): there an out-of-memory run takes the host down
# for every visitor, not just for the one who asked.

DEFAULT_SERVER_NAME = "127.0.0.1"  # app.py listens here unless GRADIO_SERVER_NAME says otherwise


def _loopback(host: str) -> bool:
    import ipaddress
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8 and ::1
    except ValueError:  # a host name, or "" (every address): reachable from elsewhere
        return False


def shared_reasons() -> list[str]:
    """Why this studio serves more people than its owner; [] = a local single-user instance.

    Shared is any of: a login (FT_AUTH: it exists to let others in), demo caps (FT_MAX_STEPS /
    FT_MAX_ROWS: they exist for visitors), a Hugging Face Space (SPACE_ID, set by every Space),
    or listening on an address other than loopback (GRADIO_SERVER_NAME, e.g. 0.0.0.0). What this
    cannot see is a reverse proxy or tunnel on the same machine in front of 127.0.0.1: its owner
    sets FT_LEND_HF_TOKEN=0 (or FT_AUTH) by hand."""
    reasons = []
    if os.environ.get("FT_AUTH"):
        reasons.append("FT_AUTH is set")
    if demo_mode():
        reasons.append("demo caps are set (FT_MAX_STEPS / FT_MAX_ROWS)")
    if os.environ.get("SPACE_ID"):
        reasons.append("it runs on a Hugging Face Space (SPACE_ID)")
    host = os.environ.get("GRADIO_SERVER_NAME", DEFAULT_SERVER_NAME).strip()
    if not _loopback(host):
        reasons.append(f"it listens on {host or 'every address'} (GRADIO_SERVER_NAME), not on loopback only")
    return reasons


def shared_instance() -> bool:
    return bool(shared_reasons())


def demo_mode() -> bool:
    """FT_MAX_STEPS or FT_MAX_ROWS set: a demo for visitors, where the forecast's refusal is final."""
    return bool(max_steps_cap() or max_rows_cap())


def lend_hf_token() -> bool:
    """FT_LEND_HF_TOKEN: may a push with an empty token field use the server's HF_TOKEN (0/1;
    default 1 on a local instance, 0 on a shared one)? A value that could never take effect
    (1 on a shared instance without login) is an error too, so the owner is not left guessing."""
    raw = os.environ.get("FT_LEND_HF_TOKEN", "").strip()
    if raw not in ("", "0", "1"):
        raise UserError(f"FT_LEND_HF_TOKEN must be 0 or 1 (1 = pushes may use the server's HF_TOKEN), got {raw!r}")
    if raw == "1" and shared_instance() and not login():
        raise UserError(f"FT_LEND_HF_TOKEN=1 lends the server's HF_TOKEN to signed-in users only, and this shared "
                        f"studio ({'; '.join(shared_reasons())}) has no login: set FT_AUTH=user:password too, "
                        f"or unset FT_LEND_HF_TOKEN")
    return raw == "1" if raw else not shared_instance()


def server_hf_token(username: str | None) -> str:
    """The server's HF_TOKEN for a push whose token field is empty ("" where none is set, as
    before); UserError saying to paste a write token where it is not lent to this caller:
    FT_LEND_HF_TOKEN off, or a shared studio and a caller who did not sign in (`username` is
    gr.Request.username, None without FT_AUTH). The token itself is never in a message."""
    paste = "paste a Hugging Face token with write access into the token field"
    if not lend_hf_token():
        raise UserError(f"{paste}: this studio does not lend the server's own token (FT_LEND_HF_TOKEN)")
    if shared_instance() and not username:
        raise UserError(f"{paste}: this shared studio lends its own token only to signed-in users (FT_AUTH)")
    return os.environ.get("HF_TOKEN", "")


def server_token_describe() -> str:
    """One line for the start-up log: whether and to whom HF_TOKEN is lent (never the token).
    Raises UserError for a bad FT_LEND_HF_TOKEN, HF_TOKEN set or not."""
    lent = lend_hf_token()
    if not os.environ.get("HF_TOKEN"):
        return "HF_TOKEN not set: pushes need a pasted token"
    if not lent:
        return "HF_TOKEN set, not lent (FT_LEND_HF_TOKEN off): pushes need a pasted token"
    if shared_instance():
        return "HF_TOKEN set, lent to signed-in users"
    return "HF_TOKEN set, used when no token is pasted"


def start_anyway_refusal(signed_in: bool) -> str | None:
    """Why "start anyway" (starting a run the memory forecast refuses) is off for this caller, or
    None where it is honoured: a local instance, or a signed-in user of a shared one not in demo mode."""
    if demo_mode():
        return "In this demo (FT_MAX_STEPS / FT_MAX_ROWS) the forecast's refusal is final: start anyway is off"
    if shared_instance() and not signed_in:
        return "On this shared studio start anyway is only for signed-in users (FT_AUTH)"
    return None
