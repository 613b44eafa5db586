from django.apps import AppConfig


class SignupConfig(AppConfig):
    name = "signup"
    verbose_name = "Signups"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported for what importing does: the deployment checks register themselves, and
        # the anymail tracking receiver connects.
        from signup import checks, provider_events  # noqa: F401
