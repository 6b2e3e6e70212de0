"""Atomic publishing of lake partitions and atomic file writes.

A partition such as ``interactions/snapshot_date=2026-11-27`` is never written in place. The writer fills a
fresh, immutable version folder ``interactions/_versions/snapshot_date=2026-11-27/<version>/`` and then swaps
the partition path, a relative symbolic link, to it with one ``os.replace`` (atomic on POSIX). A reader
therefore sees the previous complete version or the new one, never a half-written folder; a writer killed
half-way leaves only an orphan version folder, which the next publish of that partition removes. Spark,
pyarrow, DuckDB and pandas read ``interactions/`` as a normal partitioned table: folders starting with ``_`` or
``.`` are ignored by all of them.

The previous version is kept (one generation) so that a reader that resolved the old link mid-read still finds
its files.

Publishing can also be split in two steps, for outputs that must pass a gate first: :func:`stage_partition`
writes the version and points a *staging* link ``<table>/_staged/<key=value>`` at it (readers never look
there), a check reads :func:`staged_version`, and :func:`swap_partition` publishes it. :func:`publish_partition`
is the two steps at once.

Single files are written the same way, by :func:`atomic_open` (and :func:`atomic_write_bytes` on top of it):
to a temporary name beside the target, flushed, fsynced and renamed, so a file is either absent, the old one,
or complete. Every writer of a file that a later reader must find whole goes through them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from tokenrec.errors import LockTimeout, PublishError
from tokenrec.schema import MANIFEST_FILE

log = logging.getLogger(__name__)

VERSIONS_DIR = "_versions"
STAGED_DIR = "_staged"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: it becomes ``path`` only when the block ends without error.

    The handle writes ``.<name>.<random>.tmp`` beside ``path`` (readers that skip dot files never see it);
    on success it is flushed, fsynced and renamed onto ``path`` with one ``os.replace``, on an error removed.
    So ``path`` is absent, the previous file or the complete new one, never a truncated one. The handle must
    stay open to the end of the block (writers such as ``pq.ParquetWriter(fh)`` leave it open).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that the file is either absent/old or complete, never truncated."""
    with atomic_open(path) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of the file at ``path``, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], timeout_s: float, holder: str, poll_s: float = 0.5) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block, waiting up to ``timeout_s``.

    The lock belongs to the open file, so the kernel frees it when the holder exits, however it exits; the file
    itself stays (an empty file; deleting it while held would let a second process lock a new inode). On a
    shared file system the lock is only as good as its ``flock`` (NFS v4 and most cluster file systems honour
    it). ``holder`` is written into the file for the message a waiting process gives up with.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as fh:
        waited = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    other = fh.read().strip() or "another process"
                    raise LockTimeout(
                        f"{path}: still locked by {other} after {timeout_s:.0f} s; wait for it to finish (or "
                        "check that it is still alive), then run again. Never delete the lock file."
                    ) from None
                if not waited:
                    log.info("waiting for the lock %s", path)
                    waited = True
                time.sleep(poll_s)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{holder} (pid {os.getpid()})\n")
            fh.flush()
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def new_version_dir(partition: Path) -> Path:
    """A fresh, not yet existing version folder for ``partition`` (``<table>/_versions/<key=value>/<id>``)."""
    version = f"v{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
    return partition.parent / VERSIONS_DIR / partition.name / version


def publish_partition(
    partition: Path,
    write: Callable[[Path], None],
    manifest: dict[str, Any] | Callable[[Path], dict[str, Any]],
    extras: dict[str, bytes] | None = None,
) -> Path:
    """Write a new version of ``partition`` with ``write(folder)`` and atomically make it the current one.

    Args:
        partition: the partition path readers use, e.g. ``lake/interactions/snapshot_date=2026-11-27``.
        write: fills the (not yet existing) version folder it is given, e.g. ``df.write.parquet(str(folder))``.
        manifest: the manifest to store as ``_manifest.json`` inside the version, or a function of the
            version folder returning it (to count what was written).
        extras: more small files to store in the version, e.g. ``{"_config.yaml": ...}``; names must start
            with ``_`` so that readers of the table skip them.

    Returns:
        The version folder now published.

    Raises:
        PublishError: the partition path exists and is not a link made by this module (nothing is changed).
    """
    _check_partition(partition)
    return swap_partition(partition, _write_version(partition, write, manifest, extras))


def stage_partition(
    partition: Path,
    write: Callable[[Path], None],
    manifest: dict[str, Any] | Callable[[Path], dict[str, Any]],
    extras: dict[str, bytes] | None = None,
) -> Path:
    """Write a new version of ``partition`` and make it the *staged* one; readers still see the published one.

    Arguments as :func:`publish_partition`. A version staged earlier and never published is replaced (and
    removed); the published version is kept.

    Returns:
        The staged version folder (publish it with :func:`swap_partition`).

    Raises:
        PublishError: the partition path is a real folder, or the writer produced nothing.
    """
    _check_partition(partition)
    version = _write_version(partition, write, manifest, extras)
    _swap_link(staged_link(partition), version)
    log.info("staged %s -> %s", partition, version.name)
    _remove_stale_versions(partition, keep={version, current_version(partition)})
    return version


def swap_partition(partition: Path, version: Path) -> Path:
    """Atomically publish ``version``, a complete version folder of ``partition`` (e.g. the staged one).

    The previously published version is kept one generation for readers in flight; older ones and orphans
    of killed writers are removed. The staging link is dropped when it pointed at ``version``.

    Returns:
        ``version``, now published.

    Raises:
        PublishError: the partition path is a real folder, or ``version`` is not a complete version of it.
    """
    _check_partition(partition)
    version = Path(version)
    versions_root = (partition.parent / VERSIONS_DIR / partition.name).resolve()
    if version.resolve().parent != versions_root or not (version / MANIFEST_FILE).is_file():
        raise PublishError(
            f"{version} is not a complete version of {partition} (no {MANIFEST_FILE} under {versions_root}); "
            "stage it again"
        )
    previous = current_version(partition)
    _swap_link(partition, version)
    log.info("published %s -> %s", partition, version.name)
    if staged_link(partition).is_symlink() and staged_version(partition) in (version.resolve(), None):
        staged_link(partition).unlink(missing_ok=True)
    _remove_stale_versions(partition, keep={version, previous})
    return version


def staged_link(partition: Path) -> Path:
    """Where the staging link of ``partition`` lives: ``<table>/_staged/<key=value>``."""
    return partition.parent / STAGED_DIR / partition.name


def staged_version(partition: Path) -> Path | None:
    """The version folder staged for ``partition`` and not yet published, or None."""
    link = staged_link(partition)
    if not link.is_symlink():
        return None
    target = (link.parent / os.readlink(link)).resolve()
    return target if target.is_dir() else None


def current_version(partition: Path) -> Path | None:
    """The version folder ``partition`` points to, or None when nothing is published."""
    if not partition.is_symlink():
        return None
    return (partition.parent / os.readlink(partition)).resolve()


def read_manifest(partition: Path) -> dict[str, Any]:
    """The manifest of the published version of ``partition``."""
    path = partition / MANIFEST_FILE
    if not path.is_file():
        raise PublishError(f"{partition} has no published version with a manifest; run the task that writes it")
    return read_json(path)


def is_published(partition: Path) -> bool:
    return partition.is_symlink() and (partition / MANIFEST_FILE).is_file()


def _write_version(
    partition: Path,
    write: Callable[[Path], None],
    manifest: dict[str, Any] | Callable[[Path], dict[str, Any]],
    extras: dict[str, bytes] | None,
) -> Path:
    """A new, complete version folder of ``partition`` (data, extras, then the manifest), not yet linked."""
    version = new_version_dir(partition)
    version.parent.mkdir(parents=True, exist_ok=True)
    write(version)
    if not version.is_dir():
        raise PublishError(f"the writer for {partition} produced no folder at {version}; nothing was published")
    for name, data in (extras or {}).items():
        if not name.startswith("_"):
            raise ValueError(f"extra file {name!r} in a table partition must start with '_' (readers skip those)")
        atomic_write_bytes(version / name, data)
    content = manifest(version) if callable(manifest) else manifest
    atomic_write_json(version / MANIFEST_FILE, {**content, "version": version.name})
    return version


def _check_partition(partition: Path) -> None:
    if partition.exists() and not partition.is_symlink():
        raise PublishError(
            f"{partition} is a real folder, not a published version link; it was written outside tokenrec. "
            "Move it away (or delete it) and rerun the task."
        )


def _swap_link(partition: Path, version: Path) -> None:
    partition.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(version, partition.parent)
    tmp = partition.with_name(f".{partition.name}.{uuid.uuid4().hex[:8]}.link")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, partition)  # atomic: readers see the old target or the new one
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PublishError(f"could not swap {partition} to {version.name}: {exc}") from exc


def _remove_stale_versions(partition: Path, keep: set[Path | None]) -> None:
    """Remove versions of this partition other than ``keep`` (orphans of killed writers, old generations)."""
    keep_resolved = {p.resolve() for p in keep if p is not None}
    versions_root = partition.parent / VERSIONS_DIR / partition.name
    for folder in sorted(versions_root.iterdir()):
        if folder.resolve() not in keep_resolved:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed stale version %s", folder)
