"""IMAP4rev1 (RFC 3501) for the lab: a sans-IO parser (:mod:`.parser`) and session
(:mod:`.session`, the states of RFC 3501 section 3), SEARCH evaluation
(:mod:`.search`), message summaries and sections (:mod:`.message`), and the asyncio
driver that serves ``imap`` (lab port 1143, STARTTLS) and ``imaps`` (lab port
1993, implicit TLS) in :mod:`.server`.
"""
