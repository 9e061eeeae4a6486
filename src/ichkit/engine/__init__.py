"""The training engine: one fold driver for every model family (see `ichkit.engine.trainer`)."""
