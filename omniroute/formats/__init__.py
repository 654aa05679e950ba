"""Wire formats: what each API's requests, responses, usage and errors look like.

A format module knows only its own format.
"""
