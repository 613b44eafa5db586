from django.urls import path

from signup import views

app_name = "signup"

urlpatterns = [
    path("", views.signup_form, name="form"),
    path("sent/", views.signup_sent, name="sent"),
    path("resend/", views.resend, name="resend"),
    path("verify/<str:token>/", views.verify, name="verify"),
    path("not-me/<str:token>/", views.not_me, name="not-me"),
]
