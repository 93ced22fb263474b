"""Parameters of filterd.content."""

from __future__ import annotations

from importlib import resources

from filterd.config.types import (
    Param, as_bool, as_choice, as_endpoint, as_float, as_list, as_nonneg_int, as_positive_int, as_size, as_str, as_time,
)
from filterd.content.bayes.bands import DEFAULT_SCORES_TEXT, as_bayes_scores
from filterd.smtp.nexthop import parse_next_hop
from filterd.content.rules.paths import default_extra_rules_directories, shipped_rules_directory


PARAMS: list[Param] = []

# -- ClamAV scanning (clamav.py) and the quarantine store (quarantine.py) --------------
PARAMS += [
    Param("clamav_socket", "unix:/var/run/clamav/clamd.ctl", as_endpoint,
          "clamd to scan with: unix:/path or inet:host:port (Debian's clamd listens on "
          "/var/run/clamav/clamd.ctl); empty turns virus scanning off. Left unset with no "
          "socket there at start: no virus scanning, one warning (a machine without clamd)"),
    Param("clamav_timeout", "60s", as_time("s"),
          "longest time one clamd scan may take, connecting included"),
    Param("clamav_failure_action", "defer", as_choice("defer", "pass"),
          "what to do with a message clamd could not scan: defer it (4xx) or pass it unscanned"),
    Param("quarantine_directory", "$data_directory/quarantine", as_str,
          "where quarantined messages are stored, one file each (index in "
          "$data_directory/quarantine.db)"),
]

# -- Bayes classifier (filterd/content/bayes/): SpamAssassin's names and defaults ----------

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
          "scores of the BAYES_xx symbols (SpamAssassin 4's Bayes-without-network set, "
          "except BAYES_999=3 and BAYES_00=-5, chosen by cross-validation on the corpus); "
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


#: Deepest archive nesting banned_archive_max_depth may ask for: banned checks build and
#: walk the tree of parts and members recursively (MIME levels are bounded by the message).
MAX_ARCHIVE_DEPTH = 20


def _as_archive_depth(value: str) -> int:
    depth: int = as_nonneg_int(value)
    if depth > MAX_ARCHIVE_DEPTH:
        raise ValueError(f"expected at most {MAX_ARCHIVE_DEPTH}, got {depth}")
    return depth


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
    Param("banned_archive_max_depth", "2", _as_archive_depth,
          f"how many archive levels (zip in zip) banned checks look into (at most "
          f"{MAX_ARCHIVE_DEPTH}); 0 means none. A deeper archive makes the message UNCHECKED"),
    Param("banned_archive_max_members", "1000", as_positive_int,
          "most archive members of one message whose names and types are checked; "
          "a message with more is UNCHECKED (unchecked_action)"),
    Param("banned_archive_max_size", "20m", as_size,
          "most bytes decompressed while looking into the archives of one message; "
          "a message needing more is UNCHECKED (unchecked_action)"),
]

# -- content pipeline, verdicts and the content filter (pipeline.py, verdict.py, server.py) ----

#: The content pipeline's stages, in the order they run (cheap and decisive first).
CONTENT_CHECKS = ("postfix_checks", "banned", "clamav", "rules", "bayes")

#: What a verdict may do with a message (amavisd-new's destinies, plus tag and hold).
VERDICT_ACTIONS = ("pass", "tag", "quarantine", "hold", "reject", "discard")


def as_content_checks(value: str) -> list[str]:
    """A list of pipeline stages; unknown names are an error, order is always CONTENT_CHECKS'."""
    names = [n.lower() for n in as_list(value)]
    unknown = [n for n in names if n not in CONTENT_CHECKS]
    if unknown:
        raise ValueError(f"unknown content check {unknown[0]!r} (expected some of {', '.join(CONTENT_CHECKS)})")
    return [n for n in CONTENT_CHECKS if n in names]


def _as_level(value: str) -> float:
    """A spam score level; amavisd-new's ``undef`` (never) is written as an empty value."""
    return float("inf") if not value.strip() else as_float(value)


PARAMS += [
    Param("content_checks", ", ".join(CONTENT_CHECKS), as_content_checks,
          "content pipeline stages to run: postfix_checks (header/body checks), banned "
          "(banned_filename_maps), clamav, rules (score rules), bayes"),
    Param("filter_listen", "inet:127.0.0.1:10024", as_endpoint,
          "where the after-queue content filter listens (Postfix content_filter target); "
          "empty = off"),
    Param("filter_protocol", "smtp", as_choice("smtp", "lmtp"),
          "protocol spoken on filter_listen; lmtp gives Postfix one reply per recipient"),
    Param("filter_forward", "smtp:[127.0.0.1]:10025", parse_next_hop,
          "where passed mail is reinjected (amavisd-new's forward_method): smtp:[host]:port"),
    Param("filter_timeout", "300s", as_time("s"),
          "idle timeout of a content filter client, and the timeout of each command "
          "sent to filter_forward"),
    Param("filter_shutdown_grace", "10s", as_time("s"),
          "how long SIGTERM waits for messages in flight in the content filter before "
          "closing its connections"),
    Param("filter_max_connections", "20", as_positive_int,
          "most simultaneous content filter connections per worker; more get 421 4.3.2"),
    Param("message_size_limit", "10240000", as_nonneg_int,
          "largest message the content filter accepts, in bytes (0 = no limit)"),
    Param("spam_tag_level", "2.0", _as_level,
          "score at or above which X-Spam-* headers are added (amavisd-new sa_tag_level_deflt)"),
    Param("spam_tag2_level", "6.31", _as_level,
          "score at or above which mail is spam: X-Spam-Flag: YES and the subject tag "
          "(sa_tag2_level_deflt)"),
    Param("spam_kill_level", "6.31", _as_level,
          "score at or above which spam_action applies (sa_kill_level_deflt)"),
    Param("spam_subject_tag", "***Spam***", as_str,
          "put in front of the Subject of spam (at spam_tag2_level), followed by a space; "
          "empty = leave the Subject alone"),
    Param("spam_action", "pass", as_choice(*VERDICT_ACTIONS),
          "what to do with spam at spam_kill_level (amavisd-new final_spam_destiny); "
          "reject makes Postfix bounce to a sender that is usually forged (backscatter)"),
    Param("virus_action", "quarantine", as_choice(*VERDICT_ACTIONS),
          "what to do with infected mail (final_virus_destiny)"),
    Param("banned_action", "quarantine", as_choice(*VERDICT_ACTIONS),
          "what to do with mail carrying a banned part (final_banned_destiny); quarantine, "
          "not reject: after queue a reject becomes Postfix's bounce to a possibly forged sender"),
    Param("unchecked_action", "tag", as_choice(*VERDICT_ACTIONS),
          "what to do with mail that could not be fully checked: a limit reached, an encrypted "
          "or broken archive, a check that failed on it (final_unchecked_destiny; tag = "
          "amavisd-new's D_PASS with ***UNCHECKED*** in the subject)"),
    Param("virus_admin", "", as_str,
          "address that gets a short report of each virus found; empty = none"),
    Param("x_header_tag", "X-Virus-Scanned", as_str,
          "name of the header saying the message was virus scanned (amavisd-new X_HEADER_TAG)"),
    Param("x_header_line", "filterd at $mydomain", as_str,
          "value of that header (amavisd-new X_HEADER_LINE)"),
]

# -- SpamAssassin-language score rules (filterd/content/rules/) ---------------------------

PARAMS += [
    Param("rules_directory", shipped_rules_directory(), as_str,
          "directory of score rules in SpamAssassin's language; every *.cf in it is loaded "
          "in name order (default: the rules shipped with filterd)"),
    Param("rules_extra_directories", default_extra_rules_directories(), as_list,
          "more rule directories or files loaded after rules_directory (default: "
          "SpamAssassin's rules where installed: the newest sa-update set in "
          "/var/lib/spamassassin/<version>/updates_spamassassin_org, else "
          "/usr/share/spamassassin); empty turns them off"),
    Param("rules_engine", "hyperscan", as_choice("hyperscan", "regex"),
          "how patterns are matched: hyperscan pre-filters all patterns of a kind in one "
          "scan (regex confirms every hit); regex runs each pattern alone. hyperscan falls "
          "back to regex when the module is not installed"),
]
