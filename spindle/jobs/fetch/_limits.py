"""Process limits that a many-connection fetcher runs into."""

from __future__ import annotations

import sys

#: Tried in turn when the hard limit is "unlimited", which the kernel may still
#: refuse as a soft limit (Linux caps it at fs.nr_open, macOS at OPEN_MAX).
_FINITE_CEILINGS = (1 << 20, 10240)


def raise_nofile_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return the new soft limit.

    Every connection and every file being saved is a file descriptor, and the
    usual soft limit (1024) is far below what hundreds of connections need, while
    the hard limit, which an unprivileged process may raise it to, is usually much
    higher. Without ``resource`` (Windows) nothing is changed and ``-1`` is returned.
    """
    if sys.platform == "win32":
        return -1
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    targets = (hard,) if hard != resource.RLIM_INFINITY else (hard, *_FINITE_CEILINGS)
    for target in targets:
        if soft != resource.RLIM_INFINITY and target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return target
    return soft
