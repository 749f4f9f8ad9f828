"""maillab's own clients: thin wrappers over the standard library's smtplib,
poplib and imaplib that record every line they send and receive into the lab's
event stream (credentials masked), plus a raw "telnet" client for protocol cells."""
