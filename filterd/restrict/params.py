"""Parameters of the restriction engine, with Postfix's names, defaults and meanings."""

from __future__ import annotations

from filterd.config.types import (
    Param, as_bool, as_choice, as_list, as_networks, as_reply_code, as_str,
)

_R4 = as_reply_code("4")
_R45 = as_reply_code("45")
_R5 = as_reply_code("5")

PARAMS = [
    Param("mynetworks", "", as_networks,
          "trusted client networks (permit_mynetworks); empty: derived from mynetworks_style"),
    Param("mynetworks_style", "host", as_choice("host", "subnet", "class"),
          "when mynetworks is empty: trust this host (host), its subnets (subnet) or "
          "their class A/B/C networks (class); loopback always"),
    Param("mydestination", "", as_list, "domains this host is final destination for"),
    Param("relay_domains", "", as_list,
          "domains filterd's gateway relays mail to (permit_auth_destination)"),
    Param("myorigin", "$myhostname", as_str,
          "domain given to addresses without one (an unqualified recipient is for this domain)"),
    Param("allow_untrusted_routing", "no", as_bool,
          "relay mail with sender-specified routing (user%host@relay, host!user@relay, "
          "user@host@relay) to relay_domains from untrusted clients"),
    Param("allow_percent_hack", "yes", as_bool,
          "read user%domain in a local address as user@domain"),
    Param("swap_bangpath", "yes", as_bool, "read site!user in a local address as user@site"),
    Param("parent_domain_matches_subdomains",
          "debug_peer_list fast_flush_domains mynetworks permit_mx_backup_networks "
          "qmqpd_authorized_clients relay_domains smtpd_access_maps", as_list,
          "features where a domain in a table also matches its subdomains"),
    Param("smtpd_restriction_classes", "", as_list,
          "names of parameters that hold restriction lists usable as table results"),
    Param("smtpd_client_restrictions", "", as_list, "restrictions at CONNECT"),
    Param("smtpd_helo_restrictions", "", as_list, "restrictions at HELO/EHLO"),
    Param("smtpd_sender_restrictions", "", as_list, "restrictions at MAIL FROM"),
    Param("smtpd_relay_restrictions",
          "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination", as_list,
          "relay-control restrictions at RCPT TO"),
    Param("smtpd_recipient_restrictions", "", as_list, "restrictions at RCPT TO"),
    Param("smtpd_data_restrictions", "", as_list, "restrictions at DATA"),
    Param("smtpd_end_of_data_restrictions", "", as_list, "restrictions at end of data"),
    Param("smtpd_etrn_restrictions", "", as_list, "restrictions at ETRN"),
    Param("smtpd_helo_required", "no", as_bool, "require HELO/EHLO"),
    Param("access_map_reject_code", "554", _R5, "reply code for an access-table REJECT"),
    Param("access_map_defer_code", "450", _R4, "reply code for an access-table DEFER"),
    Param("defer_code", "450", _R4, "reply code for the defer restriction"),
    Param("reject_code", "554", _R5, "reply code for the reject restriction"),
    Param("relay_domains_reject_code", "554", _R45, "reply code for reject_unauth_destination"),
    Param("maps_rbl_reject_code", "554", _R45, "reply code for reject_rbl_client and friends"),
    Param("default_rbl_reply",
          "$rbl_code Service unavailable; $rbl_class [$rbl_what] blocked using $rbl_domain${rbl_reason?; $rbl_reason}",
          as_str, "template of DNSBL reject replies (Postfix syntax)"),
    Param("rbl_reply_maps", "", as_list, "tables mapping a DNSBL domain to its reply template"),
    Param("invalid_hostname_reject_code", "501", _R45, "reply code for reject_invalid_helo_hostname"),
    Param("non_fqdn_reject_code", "504", _R45, "reply code for reject_non_fqdn_*"),
    Param("unknown_address_reject_code", "450", _R45,
          "reply code for reject_unknown_sender_domain / reject_unknown_recipient_domain"),
    Param("unknown_address_tempfail_action", "defer_if_permit", as_str,
          "what a temporary DNS failure in address domain checks does"),
    Param("unknown_client_reject_code", "450", _R45, "reply code for reject_unknown_client_hostname"),
    Param("unknown_hostname_reject_code", "450", _R45, "reply code for reject_unknown_helo_hostname"),
    Param("unknown_helo_hostname_tempfail_action", "defer_if_permit", as_str,
          "what a temporary DNS failure in reject_unknown_helo_hostname does"),
    Param("plaintext_reject_code", "450", _R45, "reply code for reject_plaintext_session"),
]
