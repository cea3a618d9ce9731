"""Model files from the Hugging Face Hub, into the standard Hugging Face cache.

huggingface-hub does the transfer: it honours HF_ENDPOINT, HF_HOME, HF_TOKEN and
HF_HUB_OFFLINE, retries a cut connection with a Range request from where it stopped, and
deletes its partial file when a download fails or is cancelled. roost adds what it does
not: a refusal with the numbers before starting when the disk is too small (the Hub
client only warns), the sha256 check of LFS files against the Hub's record (the client
checks only the size), progress as events a view can draw, cancellation, and errors in
one line each.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from roost.backends.base import Cancel
from roost.errors import RoostError

DISK_HEADROOM = 256 * 1024**2  # left free on the disk after a download


class DownloadError(RoostError):
    pass


class Cancelled(DownloadError):
    exit_code = 130


@dataclass(frozen=True)
class Progress:
    filename: str
    done: int  # bytes
    total: int | None
    bytes_per_s: float
    phase: str = "download"  # "download", then "verify"

    @property
    def eta_s(self) -> float | None:
        if not self.total or self.bytes_per_s <= 0:
            return None
        return (self.total - self.done) / self.bytes_per_s


OnProgress = Callable[[Progress], None]


def _hub_error_messages(repo_id: str, filename: str | None = None):
    """Map huggingface-hub's exceptions to one-line errors a user can act on."""
    from huggingface_hub import errors

    where = f"{repo_id}/{filename}" if filename else repo_id
    return (
        (errors.GatedRepoError, lambda e: (
            f"{repo_id} is gated: accept its license on the model page, then log in with "
            "`hf auth login` or set HF_TOKEN")),
        (errors.RepositoryNotFoundError, lambda e: (
            f"no model repository {repo_id} on the Hub (or it is private: log in with `hf auth login` or set HF_TOKEN)")),
        (errors.RevisionNotFoundError, lambda e: f"{repo_id} has no such revision"),
        # Before EntryNotFoundError: "not in the local cache" is one of its kinds.
        (errors.LocalEntryNotFoundError, lambda e: (
            f"{where} is not downloaded and the Hub cannot be reached"
            + (" (HF_HUB_OFFLINE is set)" if _offline() else ""))),
        (errors.OfflineModeIsEnabled, lambda e: f"{where} is not downloaded and HF_HUB_OFFLINE is set"),
        (errors.EntryNotFoundError, lambda e: f"{repo_id} has no file {filename}"),
        (errors.HfHubHTTPError, lambda e: f"the Hub refused {where}: {str(e).splitlines()[0]}"),
    )


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


@contextmanager
def hub_errors(repo_id: str, filename: str | None = None):
    """`with hub_errors(repo, file):` around a call to the Hub turns its errors, and the
    network's, into one-line DownloadErrors; roost's own errors pass through as they are."""
    try:
        yield
    except RoostError:
        raise
    except Exception as error:
        for cls, message in _hub_error_messages(repo_id, filename):
            if isinstance(error, cls):
                raise DownloadError(message(error)) from None
        if isinstance(error, (ConnectionError, TimeoutError)) or type(error).__module__.startswith(("httpx", "requests", "urllib3")):
            raise DownloadError(f"cannot reach the Hub for {repo_id}: {error}") from None
        if isinstance(error, OSError):  # the disk filled up, or the client's size check failed
            raise DownloadError(f"downloading {filename or repo_id} failed: {error.strerror or error}") from None
        raise


def _progress_class(filename: str, on_progress: OnProgress | None, cancel: Cancel):
    """A tqdm for huggingface-hub's `tqdm_class`: forwards progress, and stops the
    transfer from inside it when cancelled (the client then removes its partial file)."""
    from tqdm.auto import tqdm

    class Reporter(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True  # roost draws its own progress
            super().__init__(*args, **kwargs)
            self._started = time.perf_counter()
            self._done = 0

        def update(self, n=1):
            if cancel.is_set():
                raise Cancelled(f"download of {filename} cancelled; the partial file was removed")
            self._done += n or 0
            if on_progress:
                elapsed = time.perf_counter() - self._started
                on_progress(Progress(filename, self._done, self.total, self._done / elapsed if elapsed > 0 else 0.0))
            return super().update(n)

    return Reporter


@dataclass(frozen=True)
class RemoteFile:
    repo_id: str
    filename: str
    size: int | None
    sha256: str | None  # for LFS files: the Hub's record of the content
    cached_path: str | None  # set when already in the cache


def remote_file(repo_id: str, filename: str, revision: str | None = None) -> RemoteFile:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    with hub_errors(repo_id, filename):
        dry = hf_hub_download(repo_id, filename, revision=revision, dry_run=True)
        sha = None
        if not _offline():
            meta = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision))
            etag = (meta.etag or "").strip('"')
            sha = etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None
    return RemoteFile(repo_id, filename, dry.file_size, sha, dry.local_path if dry.is_cached else None)


def cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def check_disk(need: int, where: str | None = None) -> None:
    where = where or cache_dir()
    probe = where
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "."
    free = shutil.disk_usage(probe).free
    if need + DISK_HEADROOM > free:
        raise DownloadError(
            f"not enough disk space: the download needs {need / 1e9:.2f} GB and {where} has "
            f"{free / 1e9:.2f} GB free (roost keeps {DISK_HEADROOM // 1024**2} MiB spare)"
        )


def sha256_of(path: str, on_progress: OnProgress | None = None, cancel: Cancel | None = None) -> str:
    digest = hashlib.sha256()
    total = os.path.getsize(path)
    done, started = 0, time.perf_counter()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            if cancel is not None and cancel.is_set():
                raise Cancelled("verification cancelled; the downloaded file is kept")
            digest.update(chunk)
            done += len(chunk)
            if on_progress:
                rate = done / max(time.perf_counter() - started, 1e-9)
                on_progress(Progress(os.path.basename(path), done, total, rate, phase="verify"))
    return digest.hexdigest()


def remove_cached(path: str) -> None:
    """Remove a snapshot entry and the blob it points to."""
    blob = os.path.realpath(path)
    for p in {path, blob}:
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


class _TailHasher(threading.Thread):
    """Hashes the file huggingface-hub is writing while it writes it, so verifying costs
    no time after the last byte. The client writes sequentially (a resume appends), so
    reading behind it sees exactly the final bytes; anything unexpected is settled by
    hashing the finished file again."""

    def __init__(self, blobs_dir: str, sha256: str):
        super().__init__(daemon=True)
        self.blobs_dir, self.prefix = blobs_dir, sha256
        self.finished = threading.Event()
        self.digest = hashlib.sha256()
        self.hashed = 0

    def _incomplete(self) -> str | None:
        try:
            names = [n for n in os.listdir(self.blobs_dir) if n.startswith(self.prefix) and n.endswith(".incomplete")]
        except FileNotFoundError:
            return None
        return os.path.join(self.blobs_dir, names[0]) if len(names) == 1 else None

    def run(self) -> None:
        path = None
        while path is None:
            if self.finished.is_set():
                return
            path = self._incomplete()
            time.sleep(0.005)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return
        with f:  # still readable after the client renames it into place
            while True:
                chunk = f.read(4 * 1024 * 1024)
                if chunk:
                    self.digest.update(chunk)
                    self.hashed += len(chunk)
                elif self.finished.is_set():
                    if not (chunk := f.read()):
                        return
                    self.digest.update(chunk)
                    self.hashed += len(chunk)
                else:
                    time.sleep(0.005)


def _repo_folder(repo_id: str) -> str:
    """The repo's folder name in the HF cache, as huggingface-hub names it."""
    from huggingface_hub.file_download import repo_folder_name

    return repo_folder_name(repo_id=repo_id, repo_type="model")


def _blobs_dir(repo_id: str) -> str:
    return os.path.join(cache_dir(), _repo_folder(repo_id), "blobs")


def remove_orphans(repo_id: str, sha256: str) -> list[str]:
    """Partial files a killed download left behind. huggingface-hub removes its partial
    file when a download fails in-process, but not after a kill, and never resumes from
    one; it holds a lock while downloading, so a free lock means they are orphans."""
    from filelock import FileLock, Timeout

    blobs = _blobs_dir(repo_id)
    try:
        names = [n for n in os.listdir(blobs) if n.startswith(sha256) and n.endswith(".incomplete")]
    except FileNotFoundError:
        return []
    lock = os.path.join(cache_dir(), ".locks", _repo_folder(repo_id), f"{sha256}.lock")
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    try:
        with FileLock(lock, timeout=0):
            for n in names:
                os.remove(os.path.join(blobs, n))
    except Timeout:
        return []  # another process is downloading it right now
    return names


def download(repo_id: str, filename: str, revision: str | None = None, *,
             on_progress: OnProgress | None = None, cancel: Cancel | None = None) -> str:
    """Download one file into the HF cache (or find it there) and verify it.
    Returns the local path."""
    from huggingface_hub import hf_hub_download

    cancel = cancel or Cancel()
    remote = remote_file(repo_id, filename, revision)
    if remote.cached_path:
        return remote.cached_path
    if remote.sha256:
        remove_orphans(repo_id, remote.sha256)
    check_disk(remote.size or 0)
    # Windows cannot rename a file another handle holds open: hash afterwards there.
    tail = _TailHasher(_blobs_dir(repo_id), remote.sha256) if remote.sha256 and os.name != "nt" else None
    if tail:
        tail.start()
    try:
        with hub_errors(repo_id, filename):
            path = hf_hub_download(
                repo_id, filename, revision=revision,
                tqdm_class=_progress_class(filename, on_progress, cancel),
            )
    finally:
        if tail:
            tail.finished.set()
            tail.join()
    if remote.sha256:
        size = os.path.getsize(path)
        actual = tail.digest.hexdigest() if tail and tail.hashed == size else None
        if actual != remote.sha256:
            actual = sha256_of(path, on_progress, cancel)  # settle it on the finished file
        if actual != remote.sha256:
            remove_cached(path)
            raise DownloadError(
                f"{filename} from {repo_id} failed verification (sha256 {actual[:12]}…, the Hub says "
                f"{remote.sha256[:12]}…); the file was removed, try again"
            )
    return path
