"""The restriction engine and every restriction it knows (Postfix's names and meanings).

The package itself exports nothing: ``filterd.restrict.params`` is imported by the parameter
registry without loading the engine. :mod:`filterd.restrict.registry` builds the engine.
"""
