"""SMTP plumbing with no policy in it, shared by the front ends that speak SMTP.

The DATA reader (:mod:`.data`), Postfix's XFORWARD (:mod:`.xforward`), the client that
hands a message to the next hop (:mod:`.client`) and next-hop specifications
(:mod:`.nexthop`). Used by the content filter (:mod:`filterd.filter`), the gateway MTA and
quarantine release; it imports no engine, so any of them can use it.
"""
