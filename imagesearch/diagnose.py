"""Why a file could not be decoded, in words a user can act on.

Decoding a messy folder makes Pillow speak in three voices, none of which names
the file: `warnings.warn` (a corrupt EXIF block), its `logging` loggers (a TIFF
with more samples per pixel than it decodes, just before an anonymous
`SyntaxError`), and libtiff's C handlers, which print to stderr ("WEBP
compression support is not configured", before Pillow raises "decoder error
-2"). Printed, that is hundreds of lines on the console; collected per file,
it is the cause of a skip.

`collecting()` gathers all three for the current thread only, so that a
decoding thread never takes what another thread says, and `reason()` turns the
exception and what was said into one line for the skip report.

How each voice is reached, and why:
- libtiff: its documented `TIFFSetErrorHandler` / `TIFFSetWarningHandler`, set
  through ctypes on the libtiff that Pillow loaded. Without a collector, the
  handlers print what libtiff's own would.
- logging: one handler on the "PIL" logger. Without a collector, it does what
  Python does for a library whose logging nobody configured (`logging.lastResort`).
- warnings: `warnings.catch_warnings` changes process-wide state and is not
  thread-safe before Python 3.14, so Pillow's modules get a stand-in for their
  `warnings` module name that collects in collecting threads and warns as
  usual everywhere else.
Each is installed once, on first use; where one cannot be (libtiff not found,
not Linux), that voice speaks as before.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from PIL import Image

_local = threading.local()
_install_lock = threading.Lock()
_installed = False


@contextmanager
def collecting() -> Iterator[list[str]]:
    """Collect what Pillow and libtiff say in this thread during the block, in a list, instead of printing it."""
    _install()
    outer = getattr(_local, "messages", None)
    _local.messages = messages = []
    try:
        yield messages
    finally:
        _local.messages = outer


def _collector() -> list[str] | None:
    return getattr(_local, "messages", None)


# --- the three voices ------------------------------------------------------------------------------


class _PillowWarnings:
    """Stands in for `warnings` inside Pillow's modules: collects in a collecting thread, warns elsewhere."""

    def warn(self, message, category=None, stacklevel=1, source=None, **options) -> None:
        messages = _collector()
        if messages is None:
            # One frame more than Pillow asked for: this method's own. The warning points where it always did.
            warnings.warn(message, category, stacklevel + 1, source, **options)
        else:
            messages.append(str(message))

    def __getattr__(self, name: str):
        return getattr(warnings, name)


class _PillowLogHandler(logging.Handler):
    """Routes Pillow's log records to the collecting thread's list; elsewhere, prints them as Python would."""

    def emit(self, record: logging.LogRecord) -> None:
        messages = _collector()
        if messages is not None:
            messages.append(record.getMessage())
        elif not logging.getLogger().handlers and logging.lastResort is not None:
            logging.lastResort.handle(record)  # logging not configured: what Python prints then


def _install() -> None:
    global _installed
    if _installed:  # every decode asks: once installed, no lock is taken
        return
    with _install_lock:
        if _installed:
            return
        Image.init()  # imports every format plugin, so all of their modules are patched below
        stand_in = _PillowWarnings()
        for name, module in list(sys.modules.items()):
            # PIL._deprecate warns about *our* use of Pillow's API: that stays a real warning.
            if name.startswith("PIL.") and name != "PIL._deprecate" and getattr(module, "warnings", None) is warnings:
                module.warnings = stand_in
        handler = _PillowLogHandler(logging.WARNING)
        logging.getLogger("PIL").addHandler(handler)
        _install_libtiff_handlers()
        _installed = True


#: libtiff's handler type: void (*)(const char *module, const char *fmt, va_list ap)
_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
_handlers: list = []  # the ctypes callbacks, kept alive for as long as libtiff may call them


def _install_libtiff_handlers() -> None:
    library, vsnprintf = _libtiff(), _vsnprintf()
    if library is None or vsnprintf is None:
        return

    def handler(prefix: str):
        def handle(module: bytes | None, form: bytes | None, arguments: int | None) -> None:
            buffer = ctypes.create_string_buffer(2048)
            vsnprintf(buffer, len(buffer), form or b"", arguments)
            text = buffer.value.decode("utf-8", "replace")
            messages = _collector()
            if messages is not None:
                messages.append(f"{prefix}{text}")
            else:  # as libtiff's default handlers print it
                sys.stderr.write(f"{(module or b'').decode('utf-8', 'replace')}: {prefix}{text}.\n")

        return _HANDLER(handle)

    on_error, on_warning = handler(""), handler("Warning, ")
    _handlers.extend([on_error, on_warning])
    for name, callback in (("TIFFSetErrorHandler", on_error), ("TIFFSetWarningHandler", on_warning)):
        setter = getattr(library, name)
        setter.argtypes, setter.restype = [_HANDLER], ctypes.c_void_p
        setter(callback)


def _libtiff() -> ctypes.CDLL | None:
    """The libtiff that Pillow's decoder uses (loaded with it), or None where it cannot be found."""
    try:
        from PIL import _imaging  # noqa: F401 - loads libtiff, where Pillow links it

        with open("/proc/self/maps") as maps:  # Linux: the files this process has mapped, its libraries among them
            mapped = {line.split()[-1] for line in maps if line.strip()}
        paths = sorted(path for path in mapped if os.path.basename(path).startswith("libtiff"))
        if not paths:
            return None
        library = ctypes.CDLL(paths[0])  # the handle Pillow holds already: dlopen counts references
        return library if hasattr(library, "TIFFSetErrorHandler") else None
    except (OSError, ImportError, IndexError):
        return None


def _vsnprintf():
    try:
        function = ctypes.CDLL(None).vsnprintf
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


# --- the reason ------------------------------------------------------------------------------------

#: How much of a file `reason` reads to tell what it is.
PREFIX_BYTES = 64


def reason(error: BaseException, messages: list[str], file: BinaryIO) -> str:
    """One line on why a file could not be decoded, from the error, what Pillow and libtiff said, and the file.

    Says what is wrong in words first ("truncated", "not an image: the file
    holds text", "Pillow cannot decode this TIFF file"), then the decoder's own
    words, which name the detail. `file` is the file that failed, open and seekable.
    """
    prefix = _read(file, 0, PREFIX_BYTES)
    said = "; ".join(dict.fromkeys(message.strip().rstrip(".") for message in messages if message.strip()))
    detail = said or _own_words(error)
    formats = claimed_formats(prefix)
    this = f"this {' or '.join(formats)} file" if formats else "this file"

    if isinstance(error, Image.DecompressionBombError):
        found = re.search(r"\((\d+) pixels\)", str(error))
        return too_many_pixels(int(found.group(1)) if found else None)
    if isinstance(error, Image.UnidentifiedImageError) or (not formats and isinstance(error, SyntaxError)):
        if not prefix:
            return "empty file (0 bytes): not an image"
        if formats:
            why = said or _probe(file, formats) or detail
            if "requires a buffer" in why:  # struct.error, read as a SyntaxError: the bytes ran out mid-header
                why = f"its header is cut short ({why})"
            return f"Pillow cannot open {this}: {why}"
        if (text := _as_text(prefix)) is not None:
            return f"not an image: the file holds text ({text!r}…)"
        return "not an image: its content is in no format Pillow reads"
    if "truncated" in detail.lower() or isinstance(error, EOFError):
        return f"truncated: {this} ends before its image does ({detail})"
    if "ghostscript" in detail.lower():
        return f"{this} needs Ghostscript to be drawn, which is not installed (install the ghostscript package)"
    if isinstance(error, NotImplementedError):
        return f"Pillow does not implement the variant of {this} ({detail})"
    if isinstance(error, MemoryError):
        return f"{this} is too large to decode in the memory available"
    return f"Pillow cannot decode {this} ({detail})"


def too_many_pixels(pixels: int | None) -> str:
    """The one reason for a decompression bomb, quoting one limit: Pillow's `Image.MAX_IMAGE_PIXELS`."""
    count = f"{pixels:,} pixels" if pixels is not None else "too many pixels"
    return (
        f"too many pixels: {count}, above the {Image.MAX_IMAGE_PIXELS:,} that Pillow allows against "
        "decompression bombs (raise PIL.Image.MAX_IMAGE_PIXELS for files you trust)"
    )


def claimed_formats(prefix: bytes) -> list[str]:
    """The formats whose signature `prefix` (a file's first bytes) carries, by Pillow's own tests, in its order."""
    Image.init()
    found = []
    for name in Image.ID:
        _, accept = Image.OPEN[name]
        if accept is None:  # an opener that tries every file claims none
            continue
        try:
            claimed = accept(prefix)
        except Exception:  # noqa: BLE001 - a signature test that fails on odd bytes claims nothing
            continue
        if claimed:  # True, or a message: "could not be identified because AVIF support not installed"
            found.append(name)
    return found


def _probe(file: BinaryIO, formats: list[str]) -> str:
    """Why Pillow's openers of `formats` refused `file` when they raised without saying more; '' if unknown.

    Pillow tries each opener and, when all refuse, raises an error that names
    none of their reasons. Only files that already failed get this second
    try, so it costs nothing on the happy path; openers read headers only.
    """
    for name in formats:
        factory, _ = Image.OPEN[name]
        try:
            file.seek(0)
            with collecting() as said:
                factory(file, "")
        except Exception as error:  # noqa: BLE001 - exactly what we want to read
            return "; ".join(said) or _own_words(error)
    return ""


def _read(file: BinaryIO, start: int, size: int) -> bytes:
    try:
        file.seek(start)
        return file.read(size)
    except (OSError, ValueError):
        return b""


def _own_words(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _as_text(prefix: bytes) -> str | None:
    """The start of `prefix`, if it reads as text (a web page, a note, JSON); else None."""
    text = prefix.decode("utf-8", "ignore")  # a character cut off at the end of the prefix is dropped
    if len(text.encode("utf-8")) < len(prefix) - 3 or not text.strip():
        return None  # more than a cut-off character is not UTF-8: binary
    if not all(char.isprintable() or char in "\r\n\t" for char in text):
        return None
    return " ".join(text.split())[:40]
