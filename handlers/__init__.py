"""Every handler set, by the name `ATLANTIC_HANDLERS` and `--handlers` use."""

from handlers.analytics import analytics
from handlers.catalog import catalog
from handlers.handler_set import HandlerSet
from handlers.orders import orders
from handlers.payments import payments
from handlers.users import users
from handlers.web import web

HANDLER_SETS: dict[str, HandlerSet] = {
    "users": users,
    "analytics": analytics,
    "catalog": catalog,
    "orders": orders,
    "payments": payments,
    "web": web,
}
