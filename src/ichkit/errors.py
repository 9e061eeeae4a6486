"""The project's base error class: `ichkit.cli.main` turns any of these into one clear line and exit code 1.

Each stage raises a subclass (TrainError, FoldsError, OOFError, ConfigError, ...) whose message names the
file or setting and the problem; no stage catches its own errors, so a bad value never ends in a raw
traceback and never in a stage-local print.
"""

from __future__ import annotations


class IchkitError(ValueError):
    """A request that cannot run as given; the message says what is wrong and what to do."""
