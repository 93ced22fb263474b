"""The restriction engine and every restriction it knows (Postfix's names and meanings).

Kept import-free: the parameter registry imports ``filterd.restrict.params`` while the
configuration module is still loading. Use :mod:`filterd.restrict.registry`.
"""
