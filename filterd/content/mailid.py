"""amavisd-new's mail_id: the name of one message in filterd's log lines and its quarantine.

Every front end that scans a message (content filter, milter, gateway MTA) gives it one,
and the quarantine names its copy ``<kind>-<mail_id>`` with it, so the id an
administrator reads in the log finds the message.
"""

from __future__ import annotations

import secrets
import string

_MAIL_ID_ALPHABET = string.ascii_letters + string.digits


def new_mail_id() -> str:
    """amavisd-new's mail_id: 12 random letters and digits naming the message in logs.

    One 128-bit draw from the system's random source, read as base-62 digits (62**12 is
    under 2**72, so the digits are uniform to within 2**-56), instead of twelve draws.
    """
    number = secrets.randbits(128)
    digits = []
    for _ in range(12):
        number, digit = divmod(number, 62)
        digits.append(_MAIL_ID_ALPHABET[digit])
    return "".join(digits)
