"""Export and validation: the hub (one checked export per subnet), parity, artifact checks, convert, compile."""
