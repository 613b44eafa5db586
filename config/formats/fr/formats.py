# "7 décembre 2026 à 00:23", as French letters write a time.
DATETIME_FORMAT = r"j F Y \à H:i"
