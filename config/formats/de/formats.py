# "7. Dezember 2026, 00:23 Uhr", as German letters write a time.
DATETIME_FORMAT = r"j. F Y, H:i \U\h\r"
