"""The export zips the Runs tab serves, and nothing more (issue 11).

Gradio serves a returned file from its cache folder (GRADIO_TEMP_DIR, default <tmp>/gradio):
a file from elsewhere is copied in there first (gradio/blocks.py move_resource_to_block_cache;
Gradio 6 deletes such copies only with `delete_cache` set, and then by age alone, whether
a page still links to them or not). A zip written inside that folder is served where it is,
without a copy. So each export is written into a folder of its own inside Gradio's cache,
and this module deletes it when it is no longer offered: when the same browser session
prepares another download, when more than MAX_PREPARED downloads exist, and at once when the
export fails. A download's link shows on one page (one session), so a session's new one
replaces its old one; the total cap bounds callers that open a new session for every call
(the HTTP API does).

Pure Python (no gradio): the tab passes the folder and the session id.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

PREFIX = "ft-export-"
# At most this many prepared downloads exist at once, over all sessions; the oldest goes first.
# With the one-per-session rule it bounds the disk kept for downloads to four of the largest
# export (a merged 1B model in fp32 zips to ~5 GB: 20 GB of a 50 GB Space), and four pages
# may hold a live link at once; a fifth evicts the oldest, whose page then asks again.
MAX_PREPARED = 4


class PreparedDownloads:
    """Export folders `<root>/ft-export-<pid>-<started>-<random>/`, at most one per session
    and MAX_PREPARED in all. `start()` makes the folder an export writes into (and first
    drops what the session had, so that room counts as free), `keep()` offers it once
    written, `discard()` drops one that failed."""

    def __init__(self, root: str | Path, max_prepared: int = MAX_PREPARED):
        self.root = Path(root)
        self.max_prepared = max_prepared
        self._lock = threading.Lock()
        self._kept: OrderedDict[Path, str | None] = OrderedDict()  # folder → session, oldest first
        me = psutil.Process()
        self._stamp = f"{me.pid}-{int(me.create_time())}"
        self._sweep_dead()

    def start(self, session: str | None) -> Path:
        """A new empty folder for one export of `session` (None: a caller without one)."""
        with self._lock:
            drop = [f for f, s in self._kept.items() if s == session and session is not None]
            while len(self._kept) - len(drop) >= self.max_prepared:  # room for this one
                drop.append(next(f for f in self._kept if f not in drop))
            for folder in drop:
                self._remove(folder)
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{self._stamp}-", dir=self.root))

    def keep(self, session: str | None, folder: Path) -> None:
        """Offer `folder` (its zip): the newest of `session`, whose other downloads go."""
        with self._lock:
            for old in [f for f, s in self._kept.items() if s == session and session is not None]:
                self._remove(old)  # two exports of one page at once: only the last one stays
            self._kept[folder] = session
            while len(self._kept) > self.max_prepared:
                self._remove(next(iter(self._kept)))

    def discard(self, folder: Path) -> None:
        """Remove the folder of an export that failed, with whatever it had written."""
        with self._lock:
            self._remove(folder)

    def alive(self) -> list[Path]:
        with self._lock:
            return list(self._kept)

    def _remove(self, folder: Path) -> None:
        self._kept.pop(folder, None)
        if folder.exists():
            shutil.rmtree(folder)

    def _sweep_dead(self) -> None:
        """Remove the export folders an earlier studio left when it was killed: those whose
        process (pid and start time in the name) is gone. Other studios sharing this cache
        folder are running, so their folders stay."""
        if not self.root.is_dir():
            return
        for folder in self.root.glob(f"{PREFIX}*"):
            found = re.fullmatch(rf"{PREFIX}(\d+)-(\d+)-.*", folder.name)
            if found and folder.is_dir() and not folder.is_symlink() and not _alive(*map(int, found.groups())):
                log.info("removing %s, an export left by a studio that is no longer running", folder.name)
                shutil.rmtree(folder)


def _alive(pid: int, started: int) -> bool:
    try:
        return int(psutil.Process(pid).create_time()) == started
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


# An absolute path in an error text (/a/b, C:\a\b), not preceded by a word character, so a
# relative name (adapter/x.json) is left alone.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?[\\/](?:[^\s'\"\\/:,;()]+[\\/])*([^\s'\"\\/:,;()]*)")


def without_paths(text: str) -> str:
    """`text` with every absolute path cut to its last part (`/srv/runs/x/adapter.bin` →
    `adapter.bin`): the server's layout is nobody's business on a public page."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "…", text)
