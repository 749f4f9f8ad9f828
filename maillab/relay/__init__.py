"""The lab's MTAs: the outgoing queue (:mod:`.queue`, ``lab.relay``), MX routing
through the lab DNS (:mod:`.mx`), the SMTP client that carries a message to the
next hop (:mod:`.client`), bounces (:mod:`.bounce`), and reading a message's path
back from its Received headers (:mod:`.hops`).
"""
