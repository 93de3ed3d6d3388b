"""Language models: tokenizer, KV-cache artifacts per backend, greedy generation and its parity, prefill/decode
latency, selection under time-to-first-token and per-token budgets, and the LM deploy."""
