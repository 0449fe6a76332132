"""The libraries underneath: TensorFlow and LiteRT started without their chatter, and the versions in use.

TensorFlow writes a dozen lines to stderr as it loads: absl's "All log
messages before absl::InitializeLog() is called…", oneDNN's "custom
operations are on", and, in its CUDA-enabled wheel, "Could not find cuda
drivers" and "failed call to cuInit … (303)". They concern its internals
only, they come from C++ before any setting is read (TF_CPP_MIN_LOG_LEVEL
filters only what is logged later), and in a notebook each becomes a pink
box under the cell. So TensorFlow is imported here with stderr sent to a
file for the moment, and what it wrote goes back to stderr except the lines
known to be such start-up notes: a real warning or error still shows.
Later messages are left to TF_CPP_MIN_LOG_LEVEL, set to 1 (warnings and
errors) unless the user set it.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

#: Start-up lines about TensorFlow's and LiteRT's internals, dropped from what they write while loading.
STARTUP_NOISE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|^I\d{4} [\d:.]+\s+\d+ \S+\] "  # an absl INFO line: "I0000 00:00:1796135218.29 2060 port.cc:153] oneDNN …"
    r"|cudart_stub\.cc|cuda_platform\.cc|failed call to cuInit|Could not find cuda drivers"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning"
    r"|^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"
)


def import_tensorflow():
    """Import TensorFlow, once, without its start-up chatter on stderr; return the module."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # before the import: what it logs later, warnings up
    with startup_lines_filtered():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs too (the CUDA wheel's cuInit): here, once
    return tf


def quietly(function: Callable[..., T], *args, **kwargs) -> T:
    """Call `function` with its start-up lines filtered from stderr (e.g. creating a LiteRT interpreter)."""
    with startup_lines_filtered():
        return function(*args, **kwargs)


@contextmanager
def startup_lines_filtered() -> Iterator[None]:
    """Within the block, lines written to the process's stderr that match STARTUP_NOISE are dropped.

    Works on file descriptor 2, where C++ libraries write, not on `sys.stderr`:
    Python's own warnings, and Jupyter's stream, are untouched. Whatever else
    was written, by anyone, is written back when the block ends.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 to speak of (an embedded interpreter)
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines()
                    if not STARTUP_NOISE.search(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


def versions() -> str:
    """The versions this runs on, in one line: "Python 3.11.7, TensorFlow 2.21.0, Keras 3.15.1, FAISS …".

    Read from the installed packages' metadata: nothing is imported, so this is instant and silent.
    """
    from importlib.metadata import PackageNotFoundError, version

    def installed(*names: str) -> str:
        for name in names:
            try:
                return version(name)
            except PackageNotFoundError:
                continue
        return "not installed"

    return (
        f"Python {sys.version.split()[0]}, TensorFlow {installed('tensorflow', 'tensorflow-cpu')}, "
        f"Keras {installed('keras')}, FAISS {installed('faiss-cpu', 'faiss')}, NumPy {installed('numpy')}, "
        f"Pillow {installed('pillow')}"
    )
