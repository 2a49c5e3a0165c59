"""What an entry point does with a mistake the user made: one clear line on stderr, exit status 2.

A configuration that composes but cannot work, a missing model, corpus, run or checkpoint, results that would
be overwritten, unusable data: each is an error the user can fix from its message alone, so the entry points
print that message on one line (`error: ...`) instead of a traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools
import logging
import sys

from hydra.errors import InstantiationException

from ambig.config import ConfigError
from ambig.curation.openai_curator import CurationError
from ambig.data.audio import AudioError
from ambig.data.skips import DataError
from ambig.losses import NonFiniteLossError
from ambig.model.load import ModelFamilyError
from ambig.model.readout import ClassTokenError

log = logging.getLogger("ambig")

USER_ERRORS = (
    ConfigError,
    FileNotFoundError,  # a model, corpus root, run directory or checkpoint that is not there
    FileExistsError,  # results that would be overwritten
    ModelFamilyError,
    ClassTokenError,
    DataError,
    AudioError,
    CurationError,
    NonFiniteLossError,
    InstantiationException,  # a corpus reader refusing its root (the cause is in the message)
)
EXIT_USER_ERROR = 2


def one_line(err: BaseException) -> str:
    """The error's message on one line; for a config instantiation, the underlying cause's."""
    cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
    text = " ".join(str(cause).split())
    return text or type(cause).__name__


def user_errors(main):
    """Wrap an entry point: a user error prints `error: <message>` and exits 2, no traceback."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as err:
            print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapped
