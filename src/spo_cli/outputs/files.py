"""How outputs reach the disk: atomic writes, image + sidecar pairs, resume checks, the batch
manifest and the lock that keeps two runs out of one folder.

Durability: every file is written to a temporary name in its folder and linked or renamed into
place, so a killed process never leaves a partial file under a real name. There is no fsync per
file: a resume checks that each finished image is whole (and remakes it if not), which also covers
what a power cut can leave behind, at none of the per-image cost.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import struct
from pathlib import Path

from spo_cli.errors import OutputError, UsageError
from spo_cli.outputs import metadata, naming

MANIFEST = "manifest.jsonl"
LOCK = ".spo-lock"
LOCK_INFO = ".spo-lock-owner"  # JSON, but not named *.json: a glob for sidecars must not see it
_TMP = ".spo-tmp"  # every temporary file spo makes starts with this, and nothing else does
_FAILURES = ".spo-failures-"
# mkstemp-style files are 0600; finished outputs get the usual umask-derived mode. The umask can
# only be read by setting it, so read it once, at import.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_HOST = socket.gethostname().replace(".", "_")
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: empty, and its CRC
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS)


def _tmp_name(final: str) -> str:
    return f"{_TMP}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.{final}"


def atomic_write(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write `data` to `path` so that `path` is either absent or complete, never partial.

    The bytes go to a temporary file in the same folder, then are linked (no overwrite) or renamed
    (overwrite) into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / _tmp_name(path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as e:
            # A write error (full disk, ulimit -f) names no file: name the one the user will look for.
            if e.filename is None:
                raise OSError(e.errno, e.strerror, str(path)) from e
            raise
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails with FileExistsError instead of replacing
            except FileExistsError:
                raise OutputError(f"{path} already exists; it was left untouched.") from None
            except OSError as e:
                if e.errno not in _NO_HARD_LINKS:
                    raise
                # Filesystems without hard links (some network and FAT mounts).
                if path.exists():
                    raise OutputError(f"{path} already exists; it was left untouched.") from None
                os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def encode(image, fmt: str, meta: dict, signer=None) -> tuple[bytes, dict]:
    """An image's final bytes and its final sidecar. With a `signer` (outputs.credentials.Signer)
    the sidecar records the signing, and the bytes, encoded with that sidecar embedded, carry the
    signed C2PA manifest: signed in memory, so the file is only ever written signed."""
    if signer is not None:
        meta = dict(meta, c2pa=signer.record())
    data = metadata.encode_image(image, fmt, meta)
    if signer is not None:
        data = signer.sign(data, fmt, meta)
    return data, meta


def write_pair(out_dir: Path, stem: str | None, fmt: str, image, meta: dict, *, overwrite: bool = False,
               default_stem: str | None = None, signer=None) -> dict:
    """Write `stem.<fmt>` then `stem.json`; the sidecar's presence marks the pair complete.

    With `stem` None, the first free name from `default_stem` is taken (never overwriting, even
    when another process takes names in the same folder at the same time). With a `signer`, the
    image is written with its C2PA manifest already in it (`encode`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        name = stem if stem is not None else naming.free_stem(out_dir, default_stem, fmt)
        try:
            return _write_pair(out_dir, name, fmt, image, meta, overwrite, signer)
        except OutputError:
            if stem is not None:
                raise
    raise OutputError(f"No free file name for {default_stem} in {out_dir}.")


def _write_pair(out_dir: Path, stem: str, fmt: str, image, meta: dict, overwrite: bool, signer=None) -> dict:
    image_path = naming.inside(out_dir, f"{stem}.{fmt}")
    sidecar_path = naming.inside(out_dir, f"{stem}.json")
    meta = dict(meta, file=image_path.name)
    if overwrite:
        # The sidecar marks a pair complete: drop it first, so a failure below never leaves an old
        # sidecar describing a new (or missing) image.
        sidecar_path.unlink(missing_ok=True)
    elif sidecar_path.exists():
        raise OutputError(f"{sidecar_path} already exists; it was left untouched.")
    data, meta = encode(image, fmt, meta, signer)
    atomic_write(image_path, data, overwrite=overwrite)
    try:
        atomic_write(sidecar_path, (metadata.dumps(meta) + "\n").encode(), overwrite=overwrite)
    except BaseException:
        # An image without its sidecar would be unreproducible and would look finished to a resume.
        image_path.unlink(missing_ok=True)
        raise
    return {"image": str(image_path), "sidecar": str(sidecar_path), "seed": meta["seed"], "prompt": meta["prompt"]}


# ---------------------------------------------------------------------------------------------
# Resume


def image_is_whole(path: Path) -> bool:
    """Whether an image file is complete: PNG chunk CRCs check out to IEND; a JPEG ends with its
    end-of-image marker; a WebP's RIFF header gives the file's true size. Reads no pixels."""
    try:
        if path.suffix == ".png":
            from PIL import Image

            with open(path, "rb") as f:
                f.seek(-len(_PNG_END), os.SEEK_END)
                if f.read() != _PNG_END:  # verify() stops at IEND without reading its CRC
                    return False
            with Image.open(path) as im:
                im.verify()  # every chunk's CRC up to IEND
            return True
        data_size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if path.suffix == ".webp":
                return head[:4] == b"RIFF" and head[8:12] == b"WEBP" and struct.unpack("<I", head[4:8])[0] + 8 == data_size
            f.seek(max(0, data_size - 2))
            return head[:2] == b"\xff\xd8" and f.read(2) == b"\xff\xd9"
    except Exception:  # any failure to read it means it must be made again
        return False


def finished_hash(out_dir: Path, stem: str, fmt: str) -> str | None:
    """The spec hash of a finished image (a whole image and its sidecar), else None."""
    image, sidecar = out_dir / f"{stem}.{fmt}", out_dir / f"{stem}.json"
    if not (image.is_file() and sidecar.is_file()):
        return None
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8")).get("spec_hash")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None  # damaged: make it again
    return recorded if image_is_whole(image) else None


def remove_leftovers(out_dir: Path) -> int:
    """Delete the temporary files that dead spo processes on this machine left in `out_dir`.

    Only spo's own names, and only when their process is gone: a live writer (another rank of a
    distributed run, a `spo generate` into the same folder) keeps its files."""
    n = 0
    for p in out_dir.glob(f"{_TMP}.*"):
        parts = p.name.split(".", 5)  # "", "spo-tmp", host, pid, random, final name
        if len(parts) < 6 or parts[2] != _HOST or not parts[3].isdigit() or _alive(int(parts[3])):
            continue
        p.unlink(missing_ok=True)
        n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# Batch records: per-process failures, the manifest


def write_failures(out_dir: Path, rank: int, failures: list[dict]) -> None:
    atomic_write(out_dir / f"{_FAILURES}{rank}", metadata.dumps(failures, indent=None).encode(), overwrite=True)


def collect_failures(out_dir: Path) -> dict[str, str]:
    """Failures recorded by every process of this run, by file stem; the records are then removed."""
    failures = {}
    for p in sorted(out_dir.glob(f"{_FAILURES}*")):
        try:
            failures.update({f["stem"]: f["error"] for f in json.loads(p.read_text())})
        except (OSError, ValueError, KeyError, TypeError):
            pass
        p.unlink(missing_ok=True)
    return failures


def clear_failures(out_dir: Path) -> None:
    for p in out_dir.glob(f"{_FAILURES}*"):
        p.unlink(missing_ok=True)


def write_manifest(out_dir: Path, rows: list[dict]) -> Path:
    path = out_dir / MANIFEST
    atomic_write(path, "".join(metadata.dumps(r, indent=None) + "\n" for r in rows).encode(), overwrite=True)
    return path


# ---------------------------------------------------------------------------------------------
# One run per folder


class FolderLock:
    """An exclusive lock on an output folder for the life of a run.

    The kernel releases it when the process ends, however it ends, so a crash leaves no stale lock;
    `.spo-lock-owner` beside it says who holds it, for the message a second run gets."""

    def __init__(self, out_dir: Path, command: str):
        self.out_dir = out_dir
        self.command = command
        self._lock = None

    def __enter__(self):
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.out_dir / LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise UsageError(f"{self.out_dir} is in use by another spo run ({self._holder()}).",
                             "Wait for it to finish, or choose another --out.") from None
        except OSError as e:
            path = self.out_dir / LOCK
            what = {errno.ELOOP: "a symbolic link loop", errno.EISDIR: "a folder"}.get(e.errno)
            if what is None:
                raise  # a full disk, a read-only folder: errors.translate says those
            raise OutputError(f"{path} is {what}, where spo keeps the lock of this folder.",
                              "Remove it (spo makes it again for each run), or choose another --out.") from None
        self._lock = lock
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "since": naming.now().isoformat(timespec="seconds")}
        atomic_write(self.out_dir / LOCK_INFO, metadata.dumps(info, indent=None).encode(), overwrite=True)
        return self

    def __exit__(self, *exc):
        (self.out_dir / LOCK_INFO).unlink(missing_ok=True)
        self._lock.release()

    def _holder(self) -> str:
        try:
            info = json.loads((self.out_dir / LOCK_INFO).read_text())
            return f"{info['command']}, process {info['pid']} on {info['host']}, since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "details unknown"


# ---------------------------------------------------------------------------------------------
# --keep-inputs: the input images beside the outputs, so that a folder replays anywhere

INPUTS_DIR = "inputs"
KEPT_SUFFIXES = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif")  # the formats inputs.py reads


def kept_name(image) -> str:
    """The copy's name under OUT/inputs/: the input's SHA-256 (so one copy serves every image made
    from those bytes, and a copy is never mistaken for other bytes) and its own suffix."""
    suffix = Path(image.path).suffix.lower().lstrip(".")
    return f"{image.sha256[:16]}.{suffix if suffix in KEPT_SUFFIXES else 'img'}"


def keep_inputs(out: Path, requests) -> dict[str, Path]:
    """Copy each distinct input file of `requests` (InputImage, by SHA-256) into OUT/inputs/, once,
    atomically; {sha256: the copy}. The bytes copied are checked against the SHA-256 the request was
    made with: a file changed since it was checked is refused, as the engine refuses it."""
    import hashlib

    from spo_cli import inputs

    kept: dict[str, Path] = {}
    if (out / INPUTS_DIR).is_dir():
        remove_leftovers(out / INPUTS_DIR)  # a copy a killed run left half made
    for r in requests:
        for image in (r.image, r.mask):
            if image is None or image.sha256 in kept:
                continue
            target = out / INPUTS_DIR / kept_name(image)
            if not target.is_file():
                data = inputs.read_bytes(image.path)[1]
                if hashlib.sha256(data).hexdigest() != image.sha256:
                    raise UsageError(f"The input {image.path} changed after it was checked; it was not copied.",
                                     "Leave input files alone while a run reads them, then run again.")
                atomic_write(target, data, overwrite=True)  # two processes of one run may both copy it
            kept[image.sha256] = target
    return kept
