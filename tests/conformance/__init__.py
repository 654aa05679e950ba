"""The conformance matrix: every client SDK against every provider type, through the gateway."""
