"""Every handler set, by the name `ATLANTIC_HANDLERS` and `--handlers` use."""

from handlers.handler_set import HandlerSet
from handlers.users import users

HANDLER_SETS: dict[str, HandlerSet] = {
    "users": users,
}
