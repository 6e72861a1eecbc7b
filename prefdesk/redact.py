"""Credentials never leave the process in text: URIs are redacted wherever prefdesk prints,
logs or stores one, and an http(s) tracking URI's user:password moves into MLflow's own
environment variables (so MLflow's messages, which quote the URI, carry none).
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
# scheme://userinfo@ : the userinfo of any URI in any text (user:password, or a bare token)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^\s/@'\"<>]+)@")
# ?token=... &password=... : secrets passed as query parameters
_QUERY_SECRET = re.compile(
    r"(?i)(?P<key>[?&;](?:password|passwd|pwd|token|access_token|api_key|apikey|secret|sig|signature)=)[^&\s'\"<>]+"
)


def redact(text: object) -> str:
    """The text with every URI's userinfo and secret query values masked."""
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", str(text))
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", out)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(uri without userinfo, user, password); user and password are None when there are none."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(user), unquote(password) if password else None


def move_http_credentials(env_var: str = "MLFLOW_TRACKING_URI") -> None:
    """`http://user:pw@host` in `env_var` becomes `http://host` plus MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD, which MLflow's REST client reads (its basic auth), so neither
    MLflow's error messages nor a child process's command line ever hold the secret.
    Database URIs keep theirs (SQLAlchemy needs them there and masks them itself)."""
    uri = os.environ.get(env_var, "")
    if not uri.lower().startswith(("http://", "https://")):
        return
    clean, user, password = split_credentials(uri)
    if user is None:
        return
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", user)
    if password is not None:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", password)
    os.environ[env_var] = clean


class RedactingFilter(logging.Filter):
    """Masks credentials in a log record before any handler (console, Prefect's API) sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        record.msg = redact(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def redact_logs(names: tuple[str, ...] = ("", "prefect", "prefdesk", "mlflow", "uvicorn")) -> None:
    """Install the filter on every handler of these loggers and their children (idempotent)."""
    manager = logging.Logger.manager
    loggers = [logging.getLogger(n) for n in names]
    loggers += [logging.getLogger(n) for n in list(manager.loggerDict)
                if any(n.startswith(p + ".") for p in names if p)]
    for lg in loggers:
        for h in lg.handlers:
            if not any(isinstance(f, RedactingFilter) for f in h.filters):
                h.addFilter(RedactingFilter())
