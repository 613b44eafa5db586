"""Request middleware of the project's own."""

from django.utils import translation


class OperatorsInEnglish:
    """The admin (and the funnel in it) in English, whatever the operator's browser asks:
    its pages, actions and messages are written in English only, and half a page in
    Django's translation of its frame would be worse than all of it in one language. Runs
    after LocaleMiddleware, which chose the language for the person-facing pages."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.path_info.startswith("/admin/"):
            return self.get_response(request)
        with translation.override("en"):
            request.LANGUAGE_CODE = "en"
            response = self.get_response(request)
        response["Content-Language"] = "en"
        return response
