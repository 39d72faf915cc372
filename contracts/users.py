"""The users set: registration, sessions and accounts."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, EmailStr, Field, model_validator

from contracts.base import Empty, Id, NoControls, Request, Wire

REGISTER = "atlantic.users.register"
LOGIN = "atlantic.users.login"
LOGOUT = "atlantic.users.logout"
LOGOUT_EVERYWHERE = "atlantic.users.logout_everywhere"
ME = "atlantic.users.me"
GET = "atlantic.users.get"

Role = Literal["customer", "admin"]

PASSWORD_MIN = 10
PASSWORD_MAX = 128
# The most common passwords that pass the length rule; a real deployment adds a breached-list check.
COMMON_PASSWORDS = frozenset(
    {"1234567890", "qwertyuiop", "password123", "password1234", "1q2w3e4r5t", "0987654321",
     "qwerty1234", "iloveyou123", "letmein123", "welcome123", "administrator", "passw0rd123"}
)


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _password_policy(password: str) -> str:
    if password.lower() in COMMON_PASSWORDS:
        raise ValueError("this password is too common")
    if len(set(password)) < 4:
        raise ValueError("use at least 4 different characters")
    return password


Email = Annotated[EmailStr, Field(max_length=254), AfterValidator(normalise_email)]
Password = Annotated[
    str, Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX), AfterValidator(_password_policy)
]


class Register(Request):
    email: Email
    password: Password
    name: Annotated[str, Field(min_length=1, max_length=100), NoControls]

    @model_validator(mode="after")
    def _password_is_not_the_email(self) -> "Register":
        if self.password.lower() == self.email:
            raise ValueError("password: must not be the email address")
        return self


# A token of 256 random bits, base64url: what a sign-in returns as token and deviceToken.
Token = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]


class Login(Request):
    email: Email
    # No policy here: a login only compares, and the reply must not reveal the rules.
    password: str = Field(min_length=1, max_length=PASSWORD_MAX)
    device_token: Token | None = Field(
        None, description="the deviceToken of this client's last sign-in to this account: its "
        "failed attempts then count against this device only, so guesses at the account from "
        "elsewhere do not lock it out")


class GetUser(Request):
    user_id: Id


Me = Empty
Logout = Empty


class User(Wire):
    user_id: str
    email: str
    name: str
    role: Role
    created_at: datetime


class Session(Wire):
    token: str
    user_id: str
    role: Role
    expires_at: datetime
    device_token: str = Field(description="send it with this client's next sign-in (Login)")


class LoggedOut(Wire):
    sessions_ended: int
