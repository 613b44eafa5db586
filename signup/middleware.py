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


class ApiErrorsAsProblems:
    """Under /api/, an error answer the API's own handlers did not write (Django's 404 for a
    path no operation has, its 405 for a method, its 400 for a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE) becomes a problem as well (signup.api.problem), keeping its
    status and Allow header: one error shape for every answer of the API."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            request.path_info.startswith("/api/")
            and 400 <= response.status_code < 500
            and not response.get("Content-Type", "").startswith("application/problem+json")
        ):
            from signup.api import problem

            message = {
                404: translation.gettext("No such operation: /api/openapi.json lists them."),
                405: translation.gettext("This operation does not take this method."),
                400: translation.gettext("The request can't be read."),
            }.get(response.status_code, translation.gettext("This request can't be answered."))
            kept = {name: response[name] for name in ("Allow",) if name in response}
            return problem(response.status_code, message, headers=kept)
        return response
