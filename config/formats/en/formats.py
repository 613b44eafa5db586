# English dates as the emails have always written them, "8 November 2026, 12:00": no
# month-first order or "noon" to misread. German and French have theirs beside this one;
# Spanish keeps Django's.
DATETIME_FORMAT = "j F Y, H:i"
