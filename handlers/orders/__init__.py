"""The orders set: places orders and owns their status, moved by requests and by saga events."""

from handlers.orders import deadlines, requests, saga
from handlers.orders.service import orders

__all__ = ["orders", "deadlines", "requests", "saga"]
