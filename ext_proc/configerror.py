"""The one error every configuration section raises (server, identity, audit, rate limits,
tracing, cache, envelope, multiplex).

Its message starts with the dotted key it is about ("audit.witness[0].dir: ..."), so that
`server.config.load_config` can prefix the file and line where that key is written.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """The configuration is unreadable or inconsistent; the message names the key."""
