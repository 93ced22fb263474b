"""Parameters of filterd.content."""

from __future__ import annotations

from filterd.config.types import Param, as_choice, as_str, as_time, parse_endpoint

PARAMS: list[Param] = []

# -- ClamAV scanning (clamav.py) and the quarantine store (quarantine.py) --------------
PARAMS += [
    Param("clamav_socket", "unix:/var/run/clamav/clamd.ctl", parse_endpoint,
          "clamd to scan with: unix:/path or inet:host:port (Debian's clamd listens on "
          "/var/run/clamav/clamd.ctl)"),
    Param("clamav_timeout", "60s", as_time("s"),
          "longest time one clamd scan may take, connecting included"),
    Param("clamav_failure_action", "defer", as_choice("defer", "pass"),
          "what to do with a message clamd could not scan: defer it (4xx) or pass it unscanned"),
    Param("quarantine_directory", "$data_directory/quarantine", as_str,
          "where quarantined messages are stored, one file each (index in "
          "$data_directory/quarantine.db)"),
]

# -- Bayes classifier (filterd/content/bayes/): SpamAssassin's names and defaults ----------
from filterd.config.types import as_bool, as_float, as_nonneg_int  # noqa: E402
from filterd.content.bayes.bands import DEFAULT_SCORES_TEXT, as_bayes_scores  # noqa: E402

PARAMS += [
    Param("use_bayes", "yes", as_bool,
          "classify messages with the Bayes model (BAYES_xx symbols) when one is learned"),
    Param("bayes_directory", "$data_directory/bayes", as_str,
          "where the Bayes model (model.npz) and its lock file live"),
    Param("bayes_min_spam_num", "200", as_nonneg_int,
          "spam messages the model must have learned before Bayes symbols fire"),
    Param("bayes_min_ham_num", "200", as_nonneg_int,
          "ham messages the model must have learned before Bayes symbols fire"),
    Param("bayes_scores", DEFAULT_SCORES_TEXT, as_bayes_scores,
          "scores of the BAYES_xx symbols (SpamAssassin 4's Bayes-without-network set); "
          "list only the ones to change, e.g. BAYES_99=4.0"),
    Param("bayes_reload_interval", "10s", as_time("s"),
          "how often a running filterd checks whether the model file was replaced"),
    Param("bayes_auto_learn", "no", as_bool,
          "learn messages whose score without Bayes is clearly spam or clearly ham"),
    Param("bayes_auto_learn_threshold_spam", "12.0", as_float,
          "score (Bayes symbols left out) at or above which a message is learned as spam"),
    Param("bayes_auto_learn_threshold_nonspam", "0.1", as_float,
          "score (Bayes symbols left out) below which a message is learned as ham"),
    Param("bayes_auto_learn_save_interval", "60s", as_time("s"),
          "longest time auto-learned messages stay in memory before the model is saved"),
]

# -- Postfix header/body checks (postfix_checks.py) and amavisd-new banned files (banned.py) --
from importlib import resources  # noqa: E402

from filterd.config.types import as_list, as_positive_int, as_size  # noqa: E402

#: The shipped amavisd-style banned file table, wherever the package is installed.
DEFAULT_BANNED_FILENAME = str(resources.files("filterd").joinpath("defaults/banned_filename"))

PARAMS += [
    Param("header_checks", "", as_list,
          "tables for primary message headers (header_checks(5)), e.g. regexp:/etc/postfix/header_checks"),
    Param("mime_header_checks", "$header_checks", as_list,
          "tables for MIME headers anywhere in the message and headers of multipart body parts"),
    Param("nested_header_checks", "$header_checks", as_list,
          "tables for the headers of attached message/rfc822 messages (MIME headers excepted)"),
    Param("body_checks", "", as_list,
          "tables for every other line: body lines, boundaries and encoded content, undecoded"),
    Param("body_checks_size_limit", "51200", as_nonneg_int,
          "bytes of each body segment (attachment) that body_checks looks at; 0 means all"),
    Param("header_size_limit", "102400", as_positive_int,
          "longest logical header kept for header checks; the excess is not inspected"),
    Param("line_length_limit", "2048", as_positive_int,
          "longer lines are cut into pieces of this many bytes, each inspected on its own"),
    Param("mime_nesting_limit", "100", as_positive_int,
          "most nested multipart levels whose boundaries are followed"),
    Param("mime_boundary_length_limit", "2048", as_positive_int,
          "bytes of a MIME boundary string that are remembered and compared"),
    Param("banned_filename_maps", f"regexp:{DEFAULT_BANNED_FILENAME}", as_list,
          "tables matched against each part's declared MIME type, declared file names, "
          "sniffed type (.exe, .exe-ms, .zip...) and UNDECIPHERABLE, amavisd-new style; "
          "OK allows the part and all inside it, DUNNO continues, anything else bans"),
    Param("banned_archive_max_depth", "2", as_nonneg_int,
          "how many archive levels (zip in zip) banned checks look into; 0 means none"),
    Param("banned_archive_max_members", "1000", as_positive_int,
          "most archive members of one message whose names and types are checked"),
    Param("banned_archive_max_size", "20m", as_size,
          "most bytes decompressed while looking into the archives of one message"),
]
