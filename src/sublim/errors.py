"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad user input (flag, spec, file). The message names the key, the value and what is allowed."""


class ConfigError(UserError):
    """An invalid configuration value."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}: invalid value {value!r}; {allowed}")


class DataError(UserError):
    """A dataset file is missing, unreadable, corrupt or fails its checksum."""


class StoreError(UserError):
    """The output directory cannot be written or is in use by another writer."""
