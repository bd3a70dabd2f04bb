"""Checksummed, cached downloads under ``KERASARCH_HOME`` (default ``~/.kerasarch``).

A file is fetched once into ``<home>/<cache_subdir>/<file name>``: it is streamed into a temporary file in the same
folder, hashed while it is written, and moved into place only when the hash matches, so that an interrupted or
corrupt download never leaves a file that looks complete. ``file://`` origins work like ``https://`` ones (that is
how the tests and offline mirrors use it).

Hashes: a full SHA-256 (64 hex digits), a SHA-256 prefix (torchvision names its files ``<name>-<first 8 hex digits
of the SHA-256>.pth`` and checks that prefix, as we do) or an MD5 (32 hex digits: the hashes keras.applications
publishes). When no hash is known the SHA-256 of the first download is recorded beside the file
(``<file>.sha256``) and later cache hits are checked against it: trust on first use, which catches a cache file that
changed later but cannot prove the first download was the genuine file.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request

__all__ = ["kerasarch_home", "get_file", "file_digest", "hash_matches", "parse_hash", "WeightsDownloadError"]

_CHUNK = 1 << 20


class WeightsDownloadError(OSError):
    """A file could not be fetched; the message names the file and the folder to put it in by hand."""


def kerasarch_home() -> str:
    """The cache root: ``$KERASARCH_HOME`` if set, else ``~/.kerasarch``."""
    return os.path.expanduser(os.environ.get("KERASARCH_HOME") or os.path.join("~", ".kerasarch"))


def parse_hash(file_hash: str) -> tuple[str, str]:
    """``(algorithm, hex)`` of a hash written ``"sha256:<hex>"``, ``"md5:<hex>"`` or bare hex (32 digits: MD5,
    otherwise a SHA-256 or a prefix of one of at least 8 digits)."""
    h = str(file_hash).strip().lower()
    algorithm = None
    for name in ("sha256", "md5"):
        if h.startswith(name + ":"):
            algorithm, h = name, h[len(name) + 1 :]
    if algorithm is None:
        algorithm = "md5" if len(h) == 32 else "sha256"
    full = 32 if algorithm == "md5" else 64
    if (
        any(c not in "0123456789abcdef" for c in h)
        or not (8 <= len(h) <= full)
        or (algorithm == "md5" and len(h) != 32)
    ):
        raise ValueError(
            f"`file_hash` must be a SHA-256 (or a prefix of at least 8 hex digits) or an MD5 hex "
            f"digest, optionally written 'sha256:<hex>' / 'md5:<hex>'. Received: file_hash={file_hash!r}"
        )
    return algorithm, h


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of the file at ``path``."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_matches(digests: dict, file_hash: str) -> bool:
    """True when ``file_hash`` (see :func:`parse_hash`) agrees with ``digests`` (algorithm -> full hex digest)."""
    algorithm, h = parse_hash(file_hash)
    return digests[algorithm].startswith(h)


def _recorded_hash_path(path):
    return path + ".sha256"


def _read_recorded(path):
    try:
        with open(_recorded_hash_path(path)) as f:
            return f.read().split()[0]
    except (OSError, IndexError):
        return None


def _check_cached(path, file_hash):
    """Whether the cached file at ``path`` is good: checked against ``file_hash`` or the recorded SHA-256."""
    expected = file_hash or _read_recorded(path)
    if expected is None:
        return True
    digests = {a: file_digest(path, a) for a in ("sha256", "md5")}
    return hash_matches(digests, expected)


def get_file(
    fname: str,
    origin: str,
    *,
    file_hash: str | None = None,
    cache_subdir: str = "weights",
    cache_dir: str | os.PathLike | None = None,
    quiet: bool = False,
) -> str:
    """Returns the local path of ``fname``, downloading it from ``origin`` into the cache if needed.

    Args:
        fname: the file name in the cache folder.
        origin: ``https://``, ``http://`` or ``file://`` URL.
        file_hash: expected SHA-256 (full, or a prefix of >= 8 hex digits) or MD5; ``None`` records the SHA-256
            of the first download and checks cache hits against it.
        cache_subdir: folder under the cache root.
        cache_dir: cache root; default :func:`kerasarch_home`.
        quiet: no progress line on stderr.

    Returns:
        The absolute path of the verified file.

    Raises:
        WeightsDownloadError: the origin cannot be reached; the message names the file and the folder to put it in.
        ValueError: the downloaded file does not match ``file_hash`` (nothing is left in the cache).
    """
    if file_hash is not None:
        parse_hash(file_hash)  # fails early on a malformed hash
    folder = os.path.join(cache_dir or kerasarch_home(), cache_subdir)
    path = os.path.abspath(os.path.join(folder, fname))
    if os.path.exists(path):
        if _check_cached(path, file_hash):
            return path
        if not quiet:
            print(
                f"kerasarch: cached {path} does not match its checksum; removing it and downloading again.",
                file=sys.stderr,
                flush=True,
            )
        for stale in (path, _recorded_hash_path(path)):
            if os.path.exists(stale):
                os.remove(stale)
    from kerasarch.fileio import atomic_write, atomic_write_text

    os.makedirs(folder, exist_ok=True)
    try:
        response = urllib.request.urlopen(origin, timeout=60)  # noqa: S310 (file:// is wanted)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise WeightsDownloadError(
            f"Could not download '{fname}' from {origin} ({getattr(e, 'reason', e)}). If this machine is "
            f"offline, fetch that URL elsewhere and put the file at {path} (folder: {folder}; set "
            f"KERASARCH_HOME to use another cache root), or pass weights=<path to the file>."
        ) from e
    if not quiet:
        print(f"kerasarch: downloading {origin} to {path}", file=sys.stderr, flush=True)
    digests = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    # Streamed into a temporary file that replaces ``path`` only when the block ends without error.
    with response, atomic_write(path, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) if response.headers else 0
        done = 0
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            out.write(chunk)
            for d in digests.values():
                d.update(chunk)
            done += len(chunk)
            if not quiet and total > (64 << 20) and done % (64 << 20) < _CHUNK:
                print(f"kerasarch: {fname}: {done >> 20} / {total >> 20} MiB", file=sys.stderr, flush=True)
        hexes = {a: d.hexdigest() for a, d in digests.items()}
        if file_hash is not None and not hash_matches(hexes, file_hash):
            algorithm, expected = parse_hash(file_hash)
            raise ValueError(
                f"Downloaded '{fname}' from {origin} does not match its checksum: expected "
                f"{algorithm} {expected}, got {hexes[algorithm]}. The file was discarded; nothing was "
                f"written to {folder}."
            )
    atomic_write_text(_recorded_hash_path(path), f"{hexes['sha256']}  {fname}\n")
    return path
