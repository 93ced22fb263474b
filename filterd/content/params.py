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
