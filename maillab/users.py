"""Lab users: who may log in, and with which password.

Passwords are lab passwords, documented and shown by ``%mail users``: the lab
teaches protocols, not secrecy. They are still never written into a transcript.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    address: str
    password: str

    @property
    def local(self) -> str:
        return self.address.split("@", 1)[0]

    @property
    def domain(self) -> str:
        return self.address.split("@", 1)[1]


#: The default lab's users (README, ``%mail users``).
DEFAULT_USERS = {
    "alice@alpha.test": "alice-pw",
    "bob@alpha.test": "bob-pw",
    "carol@beta.test": "carol-pw",
    "dave@gamma.test": "dave-pw",
}


class Users:
    """The lab's users; :meth:`at` gives the ones one mail host lets log in."""

    def __init__(self, users: dict[str, str] | None = None) -> None:
        self._users: dict[str, User] = {}
        #: which domains' users count here (None: all of them; see :meth:`at`)
        self._serves: Callable[[str], bool] | None = None
        for address, password in (users or {}).items():
            self.add(address, password)

    def at(self, serves: Callable[[str], bool]) -> Users:
        """The users whose domain ``serves(domain)`` accepts, as one mail host sees them.

        On the internet alice's password exists only at her own provider: another
        provider's server has never heard of her, and her login there fails like any
        wrong password. The view shares this object's users (one added later counts
        at once) and asks ``serves`` at every look-up (domains are added at run time).
        """
        view = Users()
        view._users = self._users
        view._serves = serves
        return view

    def _here(self, user: User) -> bool:
        return self._serves is None or self._serves(user.domain)

    def add(self, address: str, password: str) -> User:
        address = address.strip().lower()
        if address.count("@") != 1 or not all(address.split("@")):
            raise ValueError(f"a lab user is a full address like bob@alpha.test, not {address!r}")
        user = User(address, password)
        self._users[address] = user
        return user

    def __iter__(self) -> Iterator[User]:
        if self._serves is None:
            return iter(self._users.values())
        return (u for u in list(self._users.values()) if self._here(u))

    def __len__(self) -> int:
        return len(self._users) if self._serves is None else sum(1 for _ in self)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self.get(address) is not None

    def get(self, address: str) -> User | None:
        user = self._users.get(address.lower())
        return user if user is not None and self._here(user) else None

    def resolve(self, login: str) -> str | None:
        """The address a login names: the full address, or a local part that only
        one user has (clients differ in what they send)."""
        login = login.strip().lower()
        if self.get(login) is not None:
            return login
        if "@" not in login:
            matches = [u.address for u in list(self._users.values()) if u.local == login and self._here(u)]
            if len(matches) == 1:
                return matches[0]
        return None

    def authenticate(self, login: str, password: str) -> str | None:
        """The user's address when ``password`` is right, else None."""
        address = self.resolve(login)
        if address is None:
            # compare anyway so a wrong user and a wrong password take equally long
            hmac.compare_digest(password.encode(), b"x" * len(password.encode()))
            return None
        if hmac.compare_digest(self._users[address].password.encode(), password.encode()):
            return address
        return None

    def domains(self) -> list[str]:
        return sorted({u.domain for u in self})

    def password(self, login: str) -> str:
        address = self.resolve(login)
        if address is None:
            raise KeyError(f"no lab user {login!r}")
        return self._users[address].password


def parse_user_spec(spec: str) -> tuple[str, str]:
    """``"carol@alpha.test=secret"`` (the ``--user`` option) -> (address, password)."""
    address, sep, password = spec.partition("=")
    if not sep or not password or "@" not in address:
        raise ValueError(f"--user takes ADDRESS=PASSWORD, e.g. carol@alpha.test=carol-pw, not {spec!r}")
    return address.strip(), password
