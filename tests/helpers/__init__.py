"""What the tests share, in one place; the fixtures built from it are in tests/conftest.py.

- ports:    free loopback ports, waiting with a deadline, is a port closed
- repos:    the real git (never prompting), throw-away repositories, reading the issues branch, gateways
- cli:      `git issues` in-process, `mailtrack` in a process of its own (never reading the terminal)
- mail:     mail builders, the spool's outbox and the replies in it
- sink:     an aiosmtpd relay that records what the gateway sends
- dovecot:  a throw-away Dovecot (IMAP + LMTP) on loopback
- servers:  `mailtrack serve` in a process of its own; a served gateway and its clone; git send-email
- tracker:  the notification tests' tracker (a repository, its spool and a sink, and its people)

No test module imports another: a helper two files need lives here.
"""
