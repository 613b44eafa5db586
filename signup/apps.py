from django.apps import AppConfig


class SignupConfig(AppConfig):
    name = "signup"
    verbose_name = "Signups"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from signup import webhooks  # noqa: F401  (connects the anymail tracking receiver)
