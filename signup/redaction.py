"""Personal data kept out of logs and timelines: email addresses and verification tokens in
text the project did not write itself (a provider's error, a request line) are masked here.
"""

import logging
import re

# Every spelling of an address providers and servers print: "alice@example.com", "<alice@…>",
# "{'alice@example.com': (550, …)}", the %40 of a URL (the query's name and = kept), and any
# local part RFC 5322 allows, unquoted (its atext: "jane.doe/team=x@", "o'brien@") or quoted
# ("\"jane doe\"@"). It also masks what only looks like an address, such as a Message-ID
# (the ledger keeps those) or a Celery node name (which is why Celery's own lines are not
# all filtered, see config/celery.py), and may take a word joined to an address by such
# characters with it. An apostrophe or a brace where an address starts is taken as the
# text's, not the address's.
_LOCAL_PART = r"""(?:"(?:[^"\\\r\n]|\\.)*"|[\w.!#$%&*+/=?^`|~-][\w.!#$%&'*+/=?^`{|}~-]*)"""
_DOMAIN = r"[\w-]+(?:\.[\w-]+)*"
_ADDRESS = re.compile(rf"{_LOCAL_PART}@{_DOMAIN}|[\w.!$%*+^`|~-]+%40{_DOMAIN}")
# The emailed link, /signup/verify/<token>/ (signup/urls.py): the token verifies the signup.
_VERIFY_TOKEN = re.compile(r"(/signup/verify/)[^/?#\s\"'<>]+")

ADDRESS = "<address>"
TOKEN = "<token>"


def redact(text: str) -> str:
    """Return `text` with every email address and verification token masked."""
    return _VERIFY_TOKEN.sub(rf"\g<1>{TOKEN}", _ADDRESS.sub(ADDRESS, text))


class RedactingFilter(logging.Filter):
    """Mask addresses and tokens in a log record's message and traceback.

    On a handler it sees every record the handler writes; on a logger, only the records
    made on that logger (not its children's).
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# One instance to add wherever it is needed: a logger or handler holds it once however often
# it is added (gunicorn sets its loggers up again on every reload).
redacting_filter = RedactingFilter()
