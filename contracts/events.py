"""Every event on the ATLANTIC stream: the envelope, the subjects and the bodies."""

from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from contracts.base import Wire, new_id, utc_now

STREAM = "ATLANTIC"
EVENTS_PREFIX = "atlantic.events."
ALL_EVENTS = "atlantic.events.>"

USER_REGISTERED = "atlantic.events.user.registered"
USER_LOGGED_IN = "atlantic.events.user.logged_in"


class Event(Wire):
    """The envelope: every event carries its name, a UTC timestamp and a unique eventId."""

    subject: ClassVar[str]
    event: str
    event_id: str = Field(default_factory=new_id, max_length=64)
    timestamp: datetime = Field(default_factory=utc_now)


class UserRegistered(Event):
    subject: ClassVar[str] = USER_REGISTERED
    event: Literal["UserRegistered"] = "UserRegistered"
    user_id: str
    email: str
    role: str


class UserLoggedIn(Event):
    subject: ClassVar[str] = USER_LOGGED_IN
    event: Literal["UserLoggedIn"] = "UserLoggedIn"
    user_id: str
