"""The IMAP4rev1 session (RFC 3501), sans-IO: commands in, responses out.

The four states of RFC 3501 section 3 are :class:`~maillab.imap.states.State`
members with the RFC's names. :meth:`IMAPSession.execute` takes one parsed
typed command (:mod:`maillab.imap.verbs`), checks that the current state accepts
it, and runs its handler: the
handlers live in :mod:`maillab.imap.commands`, one module per state
(``any``, ``nonauth``, ``auth``, ``selected``, plus ``fetch`` and ``search``).
It yields what goes back on the wire, so the driver can write a 50 MB FETCH in
chunks and wait for a slow reader between them.

The selected mailbox is seen through a
:class:`~maillab.imap.selected_mailbox.SelectedMailbox`, which catches up with changes
made elsewhere only when RFC 3501 7.4.1 allows (see there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ..limits import Limits
from ..masking import mask_line
from ..store import InvalidName, Mailbox, NoSuchMailbox, Store
from ..users import Users
from . import verbs
from .commands import COMMANDS
from .commands.nonauth import sasl_response
from .mailbox_names import name_from_wire
from .parser import ParseError
from .responses import ANSWERED, Bad, No, Notice, Output, line
from .selected_mailbox import SelectedMailbox
from .states import State
from .verbs import Command

#: RFC 3501 7.4.1: no EXPUNGE response while answering these (their UID forms may have one).
NO_EXPUNGE_DURING = (verbs.Fetch, verbs.Store, verbs.Search)


class IMAPSession:
    """One client's session with the lab's IMAP server."""

    def __init__(
        self,
        store: Store,
        users: Users,
        limits: Limits,
        *,
        hostname: str,
        tls_active: bool = False,
        starttls_available: bool = True,
        plaintext_auth: bool = True,
        on_change: Callable[[str, str], None] | None = None,
        sessions_per_user: dict[str, int] | None = None,
    ) -> None:
        self.store = store
        self.users = users
        self.limits = limits
        self.hostname = hostname
        self.tls_active = tls_active
        self.starttls_available = starttls_available and not tls_active
        self.plaintext_auth = plaintext_auth
        self.on_change = on_change or (lambda user, folder: None)
        self.sessions_per_user = sessions_per_user if sessions_per_user is not None else {}
        self.state = State.NOT_AUTHENTICATED
        self.user: str | None = None
        self.selected: SelectedMailbox | None = None
        self.mode = "command"  # or "authenticate" (a SASL response is due), "idle"
        self.action: str | None = None  # "starttls" or "close", for the driver
        self.auth_failures = 0
        self.pending_tag: str | None = None  # the tag of IDLE or AUTHENTICATE in progress
        self.counted = False  # holds one of the user's imap_connections_per_user slots
        #: The driver runs the current command on the lab loop (not a worker thread):
        #: then its updates never wait for a mailbox that another thread holds.
        self.on_loop = False

    # -- capabilities ---------------------------------------------------------------
    def capabilities(self) -> list[str]:
        caps = ["IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"]
        if self.state == State.NOT_AUTHENTICATED:
            if self.starttls_available:
                caps.append("STARTTLS")
            if self.tls_active or self.plaintext_auth:
                caps.append("AUTH=PLAIN")
            else:
                caps.append("LOGINDISABLED")
        else:
            caps += ["NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "SPECIAL-USE", "CHILDREN",
                     f"APPENDLIMIT={self.limits.imap_literal}"]
        return caps

    def greeting(self) -> list[Output]:
        return [line(f"* OK [CAPABILITY {' '.join(self.capabilities())}] "
                     f"{self.hostname} maillab IMAP4rev1 ready"),
                Notice("state", (self.state.value,))]

    # -- entry points ----------------------------------------------------------------
    def execute(self, cmd: Command | ParseError) -> Iterator[Output]:
        """Everything the server sends for one command, its tagged response last."""
        if isinstance(cmd, ParseError):
            if cmd.tag is None:
                yield line(f"* BAD {cmd.text}")
            else:
                yield line(f"{cmd.tag} BAD {cmd.text}")
            return
        handler, allowed = COMMANDS.get(type(cmd), (None, ()))
        if handler is None or self.state not in allowed:
            names = " or ".join(s.value for s in allowed) or "no"
            yield line(f"{cmd.tag} BAD {cmd.display} is valid in {names} state,"
                       f" not in {self.state.value}")
            return
        status, text = "OK", f"{cmd.display} completed"
        try:
            result = yield from handler(self, cmd)
            if result is ANSWERED:
                return
            if result:
                text = result
        except No as exc:
            status, text = "NO", str(exc)
        except Bad as exc:
            status, text = "BAD", str(exc)
        except InvalidName as exc:
            status, text = "NO", f"[CANNOT] {exc}"
        except NoSuchMailbox as exc:
            status, text = "NO", f"[NONEXISTENT] no mailbox {exc}"
        if self.selected is not None and self.state == State.SELECTED and self.mode == "command":
            allow_expunge = cmd.uid or not isinstance(cmd, NO_EXPUNGE_DURING)
            yield from self.updates(allow_expunge)
        if self.mode != "command":
            return  # the tagged response comes after DONE or the SASL response
        yield line(f"{cmd.tag} {status} {text}")

    def continue_line(self, raw: bytes) -> Iterator[Output]:
        """A line that is not a command: the SASL response, or DONE ending IDLE."""
        text = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        tag = self.pending_tag or "*"
        if self.mode == "idle":
            self.mode = "command"
            self.pending_tag = None
            if text.upper() != "DONE":
                yield line(f"{tag} BAD expected DONE to end IDLE")
                return
            if self.selected is not None:
                yield from self.updates(True)
            yield line(f"{tag} OK IDLE terminated")
            return
        if self.mode == "authenticate":
            self.mode = "command"
            self.pending_tag = None
            if text == "*":
                yield line(f"{tag} BAD AUTHENTICATE cancelled")
                return
            yield from sasl_response(self, tag, text)
            return
        raise RuntimeError("no continuation expected")

    def idle_updates(self) -> Iterator[Output]:
        """What an IDLE client should hear now (RFC 2177: any untagged response)."""
        if self.mode != "idle" or self.selected is None:
            return
        yield from self.updates(True)

    def updates_owed(self) -> int:
        """About how many changes the next catch-up announces (0 with nothing selected)."""
        return self.selected.behind() if self.selected is not None else 0

    def tls_started(self) -> None:
        """RFC 3501 6.2.1: after STARTTLS the client must forget what it knew."""
        self.tls_active = True
        self.starttls_available = False
        self.action = None

    def masked(self, raw: bytes) -> str:
        """A command line as the transcript may show it (passwords and SASL data masked)."""
        text = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        return mask_line("imap", text, sasl=self.mode == "authenticate")

    def end(self) -> None:
        """The connection is gone: release the per-user connection slot."""
        if self.counted and self.user:
            self.sessions_per_user[self.user] = max(0, self.sessions_per_user.get(self.user, 1) - 1)
            self.counted = False
        self.selected = None

    # -- what the handlers share -----------------------------------------------------
    def set_state(self, state: State) -> None:
        self.state = state

    def mailbox_name(self, raw: bytes) -> str:
        """A mailbox name from the wire (modified UTF-7) as the store's Unicode name."""
        return self.store.canonical_name(name_from_wire(raw))

    def mailbox(self, name: str) -> Mailbox:
        """The logged-in user's folder ``name``."""
        assert self.user is not None
        return self.store.mailbox(self.user, name)

    def view(self) -> SelectedMailbox:
        """The selected mailbox (only called by handlers of the selected state)."""
        assert self.selected is not None
        return self.selected

    def updates(self, allow_expunge: bool) -> Iterator[Output]:
        """Untagged responses for what changed in the selected mailbox (RFC 3501 7.4.1)."""
        view = self.selected
        if view is None:
            return
        if view.gone():
            # deleted or renamed by another session: nothing sensible can follow
            yield line(f"* BYE mailbox {view.name} was deleted or renamed by another session")
            self.selected = None
            self.action = "close"
            return
        yield from view.catch_up(allow_expunge, wait=not self.on_loop)
