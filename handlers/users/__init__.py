"""The users set: registration, sign-in, sessions and accounts.

This module is the set itself; its handlers are in requests.py, imported at the end, so that
they find the set here when they register on it.
"""

from handlers.handler_set import HandlerSet

users = HandlerSet("users", "Accounts, sign-in and sessions", outbox_schema="users")


# The handlers, registered on the set as they are imported (they import the set from here).
from handlers.users import requests  # noqa: E402

__all__ = ["users", "requests"]
