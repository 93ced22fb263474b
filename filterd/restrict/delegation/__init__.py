"""Postfix's policy delegation protocol (SMTPD_POLICY_README): the codec and the client.

It sits beside the restriction engine because ``check_policy_service`` asks a chained
policy service through it; the policy front end (:mod:`filterd.policy`) answers Postfix
with the same codec.
"""
