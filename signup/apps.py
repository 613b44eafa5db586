from django.apps import AppConfig


class SignupConfig(AppConfig):
    name = "signup"
    verbose_name = "Signups"
    default_auto_field = "django.db.models.BigAutoField"
