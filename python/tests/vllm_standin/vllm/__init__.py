"""Stand-in of vLLM for the mx plugin's tests (see ../README.md)."""
