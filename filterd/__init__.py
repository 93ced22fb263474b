"""filterd: an anti-spam and anti-virus appliance for Postfix mail gateways."""

#: The release, read by ``filterd --version`` and by pyproject.toml (one place to bump).
__version__ = "0.1.0"
