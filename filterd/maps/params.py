"""Parameters of filterd.maps (Postfix names and defaults, as postconf -d shows them)."""

from __future__ import annotations

from filterd.config.types import Param, as_str

PARAMS: list[Param] = [
    Param("smtpd_null_access_lookup_key", "<>", as_str,
          "the key an access table is searched with for the null sender address"),
    Param("recipient_delimiter", "", as_str,
          "characters that separate a user name from an address extension (user+ext@domain); "
          "access tables are also searched without the extension"),
]
