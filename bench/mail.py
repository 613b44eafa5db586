"""An email backend that accepts every message at once, so that the provider is not what the
benchmarks measure; it notes each arrival (time, recipients, tags) for the runner."""

from django.core.mail.backends.base import BaseEmailBackend

from bench import recording


class EmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages) -> int:
        for message in email_messages:
            # The MIME rendering every real backend does (SMTP, or an ESP's payload).
            message.message().as_bytes()
            recording.push(recording.MAIL, to=message.to, tags=getattr(message, "tags", []))
        return len(email_messages)
