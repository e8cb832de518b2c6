"""Telling a user why a file operation failed, in one line that names the file and says what to do.

A full disk or a read-only output folder is the user's to fix, not a bug: it deserves a sentence, not a traceback.
"""

from __future__ import annotations

import errno

_HINTS = {
    errno.ENOSPC: "the disk is full: free space there or choose another output folder",
    errno.EDQUOT: "the disk quota is used up: free space there or choose another output folder",
    errno.EROFS: "that file system is read-only: choose another output folder",
    errno.EACCES: "no permission: choose a folder you may write to (or fix its permissions)",
    errno.EPERM: "not permitted: choose a folder you may write to (or fix its permissions)",
}


def describe_os_error(err: OSError, where: object = None) -> str:
    """``<file>: <system message>; <what to do>`` for a failed read or write; `where` names the place when the
    error does not (a write to an open file fails without a file name)."""
    where = err.filename if err.filename is not None else where or "a file"
    what = err.strerror or str(err)
    hint = _HINTS.get(err.errno)
    return f"{where}: {what}" + (f"; {hint}" if hint else "")
