# English dates as the emails have always written them, "8 November 2026, 12:00": no
# month-first order or "noon" to misread. The other languages keep Django's own formats.
DATETIME_FORMAT = "j F Y, H:i"
