"""The session engine: Django's database sessions, refusing keys Django never makes.

A session cookie is the client's to write. Django's keys are 32 lower-case letters and
digits; anything else (a NUL byte, which PostgreSQL cannot even compare, or a megabyte of
text) is treated as no session at all, as an unknown key is, instead of reaching the
database.
"""

import re

from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore

_SESSION_KEY = re.compile(r"\A[a-z0-9]{8,40}\Z")


class SessionStore(DatabaseSessionStore):
    def _validate_session_key(self, key):
        return isinstance(key, str) and bool(_SESSION_KEY.match(key))
