"""Resilience end to end: the official openai SDK -> the gateway -> several fake upstreams.

Each fake is its own connection (its own prefix, unless a test needs two accounts
of one provider). Where the gateway only has to *know* the time (cooldowns,
breakers, terminal states) a ``ManualClock`` stands in for it; where the gateway
itself must wait (timeouts, queues, waiting out a cooldown) the waits are real and
short, and the tests assert the elapsed time against the configured bounds.

Requests carry distinct first messages unless a test is about sessions: the
gateway fingerprints a conversation into a sticky session, which would otherwise
pin every request to the first connection that served it.
"""
