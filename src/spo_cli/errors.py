"""Every failure a user can meet, as one paragraph: what went wrong and what to do.

Library exceptions (huggingface_hub, torch, the OS) are translated here and nowhere else, by
class name where importing the library just to test `isinstance` would slow start-up.
"""

from __future__ import annotations

import errno

EXIT_FAILURE = 1  # the run failed (a model that cannot load, images that failed)
EXIT_USAGE = 2  # bad input: options, files, metadata; nothing was run
EXIT_SKIPPED = 3  # spo batch --skip-invalid: the valid lines were made, some lines were skipped
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGTERM: 143)


class SpoError(Exception):
    """An expected failure with a message for humans."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def paragraph(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class UsageError(SpoError):
    """Bad input from the user: options, arguments, files."""

    exit_code = EXIT_USAGE


class ModelError(SpoError):
    """A model could not be found, fetched or loaded."""


class GenerationError(SpoError):
    """The pipeline ran but the result is unusable (NaN, out of memory)."""


class OutputError(SpoError):
    """An image or sidecar could not be written."""


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _is(exc: BaseException, *names: str) -> bool:
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def oom_hint(batch: int = 1, pixels: int = 1024 * 1024, options=None, hires=None, edit: bool = False) -> str:
    """The memory option most likely to help, given what the failed call was doing (`hires`: the
    request's Hires settings; `edit`: it started from an input image)."""
    offload = getattr(options, "offload", None)
    tips = []
    if batch > 1:
        tips.append(f"a smaller --batch-size (this call had {batch} images)")
    if hires is not None:
        tips.append(f"a lower --hires (this call upscaled by {hires.scale:g})")
    if pixels > 1024 * 1024 and not getattr(options, "vae_tiling", False):
        # SDXL's VAE tiles only images over 1024 px a side; the input's encode is tiled as well.
        tips.append("--vae-tiling (" + ("encodes the input and decodes the image" if edit else "decodes large images")
                    + " in tiles)")
    if hires is not None and hires.upscaler != "latent":
        tips.append("--hires-upscaler latent (no decode and encode between the two passes)")
    if edit and pixels > 1024 * 1024:
        tips.append("--width and --height under the input's size (the edit is made at the input's size)")
    if offload is None:
        tips.append("--offload model (only the part of SDXL that is running stays on the GPU)")
    elif offload == "model":
        tips.append("--offload sequential (slowest, least GPU memory)")
    tips.append("closing other programs that use the GPU")
    return "Try " + ", or ".join(tips) + "."


_FILE_SYSTEM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.ELOOP, errno.EISDIR)


def _file_system(e: OSError) -> SpoError:
    """What the file system refused, whatever spo was writing or reading (images, sidecars, the
    manifest, the folder lock): none of these is a bug, each has one thing to do."""
    where = e.filename or "while writing"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"The disk is full ({where}).",
                           "Free some space or choose another --out folder; nothing half-written was left behind.")
    if e.errno == errno.EFBIG:
        return OutputError(f"A file came out larger than this process may write (ulimit -f) or its file system can "
                           f"hold ({where}).", "Raise the limit (ulimit -f unlimited) or choose another --out folder; "
                           "nothing half-written was left behind.")
    if e.errno == errno.EROFS:
        return OutputError(f"{e.filename or 'The output folder'} is on a read-only file system.",
                           "Choose another --out folder (or remount it read-write).")
    if e.errno == errno.ELOOP:
        return OutputError(f"{e.filename or 'A path'} is a symbolic link loop (a link that leads back to itself, or "
                           "a chain of links too long to follow).", "Remove the link or point it at a real file.")
    return OutputError(f"{e.filename or 'A path spo needs as a file'} is a folder.",
                       "Move it out of the way, or choose another --out folder.")


def translate(exc: BaseException, *, repo: str | None = None) -> SpoError | None:
    """Map a library exception to a SpoError, or None when it is a bug (show the traceback)."""
    if isinstance(exc, SpoError):
        return exc
    for e in _chain(exc):
        if _is(e, "OutOfMemoryError") or (_is(e, "RuntimeError") and "out of memory" in str(e).lower()):
            return GenerationError("The GPU ran out of memory.", oom_hint())
        if isinstance(e, OSError) and e.errno in _FILE_SYSTEM:
            return _file_system(e)
        where = f"'{repo}'" if repo else "the repository"
        if _is(e, "GatedRepoError"):
            return ModelError(
                f"{where} is gated on the Hugging Face Hub and this machine has no access to it.",
                "Accept its licence on the repo's page, then log in with `hf auth login` or set HF_TOKEN.",
            )
        if _is(e, "RepositoryNotFoundError"):
            return ModelError(
                f"{where} was not found on the Hugging Face Hub (or it is private).",
                "Check the spelling; for a private repo, log in with `hf auth login` or set HF_TOKEN.",
            )
        if _is(e, "RevisionNotFoundError"):
            return ModelError(
                f"The revision asked for does not exist in {where}.",
                "Check --revision: a branch, a tag or a full commit hash.",
            )
    return None
