"""A class network: every student's lab is a mail domain of one class zone.

The teacher runs the class DNS (:mod:`.server`), authoritative for ``class.test``,
and makes one TSIG key per student (:mod:`.keys`). A student's lab joins with its key
(:mod:`.member`): it becomes ``NAME.class.test``, registers its MX and A records by
signed RFC 2136 UPDATE (checked by :mod:`.policy`: a key changes only its own
names), keeps them fresh, and relays mail for every other class domain through the
class DNS and real SMTP. :mod:`.map` is what the teacher's class map shows.
"""

from .keys import ClassKey, KeyFile, parse_key_spec
from .server import DEFAULT_PORT, DEFAULT_ZONE, ClassDNS

__all__ = ["DEFAULT_PORT", "DEFAULT_ZONE", "ClassDNS", "ClassKey", "KeyFile", "parse_key_spec"]
