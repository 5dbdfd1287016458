"""Reading a file the user points at (replay's FILE, a sidecar beside an image) without trusting it.

- It is opened non-blocking and checked for what it is before a byte is read: a regular file, or a
  pipe (`spo replay <(cat x.json)`, a named FIFO); a folder, a device (`/dev/zero`), a socket, a
  symbolic link loop or a dangling link each get their own sentence.
- A pipe is read with a size bound and a deadline, so a FIFO with no writer (read at once as
  empty) or a writer that never writes cannot hang the command.
- What it holds is told by its first bytes, not its name: a JPEG named `.png` is read as the JPEG
  it is, and a message about it says so.
- A PNG's text chunks are read by walking its chunks and skipping the image data, so no pixel is
  decoded: a 100-megapixel PNG costs its text, not its pixels (and PIL's decompression-bomb
  warning never fires). A JPEG's segments and a WebP's chunks are walked the same way for the
  XMP packet (`image_xmp`), which also tells a whole file from one cut short.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import struct
import time
import zlib
from pathlib import Path

from spo_cli.errors import UsageError

PIPE_WAIT_S = 30.0  # how long a pipe gets to deliver what it holds (`<(ssh host cat x.json)` is slow)
JSON_MAX_BYTES = 1 << 20  # a sidecar with the longest prompts spo takes is under 150 kB
PIPE_MAX_BYTES = 1 << 30  # an image through a pipe is read through to its text chunks, to this much
TEXT_CHUNK_MAX_BYTES = 1 << 20  # a PNG text chunk, compressed or not; spo's own are a few kB
PNG_CHUNKS_MAX = 100_000  # chunks walked in one PNG (a real one has tens, or thousands of IDATs)
JPEG_SEGMENTS_MAX = 5_000  # segments before a JPEG's image data (a real one has tens)
JPEG_FILL_MAX = 1 << 16  # fill bytes before one marker (encoders write none, or a few)
WEBP_CHUNKS_MAX = 5_000  # chunks walked in one WebP (a still image has a handful)
XMP_MAX_BYTES = 1 << 20  # an XMP packet read (xmp.READ_MAX_BYTES); a larger one is passed over
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPLAY_HINT = "Replay takes one image or sidecar .json file."
_NAMES = {"png": "a PNG", "jpeg": "a JPEG", "webp": "a WebP", None: "neither a PNG, a JPEG nor a WebP"}
_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def sniff(head: bytes) -> str | None:
    """The image format of a file from its first 12 bytes: png, jpeg, webp, or None."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def misnamed(path: Path, kind: str | None) -> str:
    """' (it is a JPEG, named .png)' when the name promises another image format than the content."""
    named = _SUFFIXES.get(path.suffix.lower())
    if named is None or named == kind:
        return ""
    return f" (it is {_NAMES[kind]}, named {path.suffix})"


class Source:
    """An open file to read from: a regular file (seekable) or a pipe (bounded, with a deadline)."""

    def __init__(self, path: Path, hint: str = REPLAY_HINT):
        self.path = Path(path)
        self.fd = _open(self.path, hint)
        self.pipe = stat.S_ISFIFO(os.fstat(self.fd).st_mode)
        self.deadline = time.monotonic() + PIPE_WAIT_S
        self.taken = 0  # bytes read from a pipe so far
        self._ahead = b""  # read to sniff, not yet consumed

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)

    def head(self, n: int = 12) -> bytes:
        if len(self._ahead) < n:
            self._ahead += self._read(n - len(self._ahead))
        return self._ahead[:n]

    def read(self, n: int) -> bytes:
        """Up to `n` bytes; fewer only at the end of the file."""
        taken, self._ahead = self._ahead[:n], self._ahead[n:]
        return taken + (self._read(n - len(taken)) if n > len(taken) else b"")

    def skip(self, n: int) -> int:
        """Pass over `n` bytes; how many there were."""
        ahead = min(n, len(self._ahead))
        self._ahead = self._ahead[ahead:]
        n -= ahead
        if not self.pipe:
            here = os.lseek(self.fd, 0, os.SEEK_CUR)
            end = os.fstat(self.fd).st_size
            os.lseek(self.fd, min(here + n, end), os.SEEK_SET)
            return ahead + min(n, max(0, end - here))
        skipped = 0
        while skipped < n:
            piece = self._read(min(n - skipped, 1 << 20))
            if not piece:
                break
            skipped += len(piece)
        return ahead + skipped

    def read_all(self, limit: int, what: str) -> bytes:
        data = self.read(limit + 1)
        if len(data) > limit:
            raise UsageError(f"{self.path} is larger than {limit:,} bytes, more than any {what} spo writes.")
        return data

    def _read(self, n: int) -> bytes:
        if not self.pipe:
            out = []
            while n > 0:
                piece = os.read(self.fd, min(n, 1 << 24))
                if not piece:
                    break
                out.append(piece)
                n -= len(piece)
            return b"".join(out)
        out = []
        while n > 0:
            if self.taken >= PIPE_MAX_BYTES:
                raise UsageError(f"{self.path} is a pipe that sent more than {PIPE_MAX_BYTES:,} bytes "
                                 "without the metadata spo looks for.")
            try:
                piece = os.read(self.fd, min(n, 1 << 20, PIPE_MAX_BYTES - self.taken))
            except BlockingIOError:  # the writer is there but has sent nothing yet
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise UsageError(f"{self.path} is a pipe that sent nothing more for {PIPE_WAIT_S:g} s.",
                                     "A pipe (e.g. <(cat x.json)) is read only while its writer sends; give "
                                     "the file itself instead.") from None
                select.select([self.fd], [], [], left)
                continue
            if not piece:  # end of file: the writer closed it, or no writer had it open
                break
            self.taken += len(piece)
            out.append(piece)
            n -= len(piece)
        return b"".join(out)


def _open(path: Path, hint: str) -> int:
    """A read-only, non-blocking descriptor of `path`, if it is a regular file or a pipe."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise _missing(path, e) from None
    _refuse_kind(path, st.st_mode, hint)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _missing(path, e) from None
    try:
        _refuse_kind(path, os.fstat(fd).st_mode, hint)  # what was opened, if the name changed meanwhile
    except BaseException:
        os.close(fd)
        raise
    return fd


def _missing(path: Path, e: OSError) -> UsageError:
    if e.errno == errno.ELOOP:
        return UsageError(f"{path} is a symbolic link loop (a link that leads back to itself).",
                          "Point it at the sidecar or image it stands for.")
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        if os.path.islink(path):
            return UsageError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist.")
        return UsageError(f"{path} does not exist.")
    if e.errno in (errno.EACCES, errno.EPERM):
        return UsageError(f"{path} cannot be read (permission denied).")
    return UsageError(f"{path} cannot be read ({e.strerror or e}).")


def _refuse_kind(path: Path, mode: int, hint: str) -> None:
    if stat.S_ISREG(mode) or stat.S_ISFIFO(mode):
        return
    if stat.S_ISDIR(mode):
        raise UsageError(f"{path} is a folder.", hint)
    what = "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else \
        "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
    raise UsageError(f"{path} is {what}, not a file.", hint)


# ---------------------------------------------------------------------------------------------
# PNG text chunks, without the pixels


class NotPNG(Exception):
    """The file starts as a PNG but its chunks are not a PNG's."""


def png_text(src: Source, *, whole: bool = False) -> dict[str, str]:
    """The tEXt, zTXt and iTXt chunks of the PNG `src` (positioned at its start), by keyword.

    Image data is skipped, never decoded; a chunk whose CRC is wrong is damage (NotPNG), a text
    chunk too large for spo's metadata is passed over. A file cut short keeps what came before,
    unless `whole` asks for the file to end with its IEND chunk (NotPNG)."""

    def cut_short() -> dict[str, str]:
        if whole:
            raise NotPNG("it ends before its IEND chunk: cut short")
        return text

    if src.read(8) != PNG_SIGNATURE:
        raise NotPNG("no PNG signature")
    text: dict[str, str] = {}
    for n in range(PNG_CHUNKS_MAX):
        head = src.read(8)
        if len(head) < 8:
            if n == 0:
                raise NotPNG("no IHDR header")
            return cut_short()  # what came before still counts, as PIL has it
        length, kind = struct.unpack(">I", head[:4])[0], head[4:]
        if not kind.isalpha() or length > 0x7FFFFFFF or (n == 0 and kind != b"IHDR"):
            raise NotPNG("no IHDR header" if n == 0 else f"a damaged chunk header after {n} chunks")
        if kind == b"IEND":
            if whole and src.read(4) != struct.pack(">I", zlib.crc32(b"IEND")):
                raise NotPNG("its IEND chunk is cut short or damaged")
            return text
        if kind in (b"tEXt", b"zTXt", b"iTXt", b"IHDR") and length <= TEXT_CHUNK_MAX_BYTES:
            data = src.read(length)
            crc = src.read(4)
            if len(data) < length or len(crc) < 4:
                return cut_short()
            if struct.unpack(">I", crc)[0] != zlib.crc32(kind + data):
                raise NotPNG(f"a damaged {kind.decode()} chunk (its CRC does not match)")
            if kind != b"IHDR":
                item = _text_chunk(kind, data)
                if item is not None:
                    text.setdefault(*item)
        elif src.skip(length + 4) < length + 4:
            return cut_short()
    if whole:
        raise NotPNG(f"more than {PNG_CHUNKS_MAX:,} chunks")
    return text


def _text_chunk(kind: bytes, data: bytes) -> tuple[str, str] | None:
    """(keyword, text) of one text chunk, or None when it is malformed (as PIL passes over it)."""
    try:
        key, rest = data.split(b"\0", 1)
        if kind == b"tEXt":
            value = rest
        elif kind == b"zTXt":
            value = _inflate(rest[1:]) if rest[:1] == b"\0" else None
        else:
            flag, method, rest = rest[0], rest[1], rest[2:]
            _lang, _translated, value = rest.split(b"\0", 2)
            if flag:
                value = _inflate(value) if method == 0 else None
        if value is None:
            return None
        return key.decode("latin-1"), value.decode("utf-8" if kind == b"iTXt" else "latin-1")
    except (ValueError, IndexError, zlib.error):
        return None


def _inflate(data: bytes) -> bytes | None:
    d = zlib.decompressobj()
    out = d.decompress(data, TEXT_CHUNK_MAX_BYTES)
    return None if d.unconsumed_tail else out  # more than any text spo reads: passed over


# ---------------------------------------------------------------------------------------------
# XMP packets, without the pixels


class Damaged(Exception):
    """An image file whose container is broken or cut short; the message says how."""


def image_xmp(src: Source, kind: str) -> bytes | None:
    """The XMP packet of the `kind` image `src` (positioned at its start), or None; walks the
    container to its end, so a file cut short or with a broken structure is Damaged. Reads headers
    only: image data is skipped, never decoded."""
    from spo_cli.outputs import xmp

    if kind == "png":
        try:
            packet = png_text(src, whole=True).get(xmp.PNG_KEY)
        except NotPNG as e:
            raise Damaged(str(e)) from None
        return None if packet is None else packet.encode("utf-8", "surrogatepass")
    if kind == "jpeg":
        return _jpeg_xmp(src, xmp.JPEG_NAMESPACE)
    return _webp_xmp(src, xmp.WEBP_CHUNK)


def _jpeg_xmp(src: Source, namespace: bytes) -> bytes | None:
    if src.read(2) != b"\xff\xd8":
        raise Damaged("no JPEG start-of-image marker")
    short = "it ends before its image data: cut short"
    packet = None
    for n in range(JPEG_SEGMENTS_MAX):
        mark = src.read(2)
        for _ in range(JPEG_FILL_MAX):  # fill bytes (0xFF) may pad the space before a marker
            if mark != b"\xff\xff":
                break
            mark = b"\xff" + src.read(1)
        if len(mark) < 2:
            raise Damaged(short)
        if mark[0] != 0xFF or mark[1] == 0xFF:
            raise Damaged(f"a damaged segment marker after {n} segments")
        code = mark[1]
        if code == 0xD9:
            raise Damaged("it ends before any image data")
        if 0xD0 <= code <= 0xD7 or code == 0x01:  # markers without a length
            continue
        size = src.read(2)
        if len(size) < 2:
            raise Damaged(short)
        length = struct.unpack(">H", size)[0] - 2
        if length < 0:
            raise Damaged(f"a segment with an impossible length after {n} segments")
        if code == 0xE1 and packet is None:  # APP1: EXIF or XMP, told apart by the namespace
            data = src.read(length)
            if len(data) < length:
                raise Damaged(short)
            if data.startswith(namespace):
                packet = data[len(namespace):]
            continue
        if src.skip(length) < length:
            raise Damaged(short)
        if code == 0xDA:  # start of scan: the image data runs from here to the end-of-image marker
            if not src.pipe and _tail(src, 2) != b"\xff\xd9":
                raise Damaged("it does not end with the end-of-image marker: cut short")
            return packet
    raise Damaged(f"more than {JPEG_SEGMENTS_MAX:,} segments before its image data")


def _webp_xmp(src: Source, fourcc: bytes) -> bytes | None:
    head = src.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        raise Damaged("no RIFF WEBP header")
    left = struct.unpack("<I", head[4:8])[0] - 4  # the RIFF size counts "WEBP" and the chunks
    if not src.pipe and left + 12 != os.fstat(src.fd).st_size:
        raise Damaged(f"its header promises {left + 12:,} bytes and the file holds "
                      f"{os.fstat(src.fd).st_size:,}" + (": cut short" if left + 12 > os.fstat(src.fd).st_size else ""))
    packet = None
    for n in range(WEBP_CHUNKS_MAX):
        if left == 0:
            if n == 0:
                raise Damaged("no image chunk")
            return packet
        chunk = src.read(8)
        if len(chunk) < 8 or left < 8:
            raise Damaged("cut short in a chunk header")
        kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if n == 0 and kind not in (b"VP8 ", b"VP8L", b"VP8X"):
            raise Damaged("its first chunk is not VP8, VP8L or VP8X")
        padded = size + (size & 1)
        if padded > left - 8:
            raise Damaged(f"a {kind.decode('latin-1')!r} chunk runs past the end of the file")
        if kind == fourcc and packet is None and size <= XMP_MAX_BYTES:
            packet = src.read(size)
            got = len(packet) + src.skip(padded - size)
        else:
            got = src.skip(padded)
        if got < padded:
            raise Damaged("cut short in a chunk")
        left -= 8 + padded
    raise Damaged(f"more than {WEBP_CHUNKS_MAX:,} chunks")


def _tail(src: Source, n: int) -> bytes:
    size = os.fstat(src.fd).st_size
    return os.pread(src.fd, n, max(0, size - n))
