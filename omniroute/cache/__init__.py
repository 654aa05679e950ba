"""Cache backends: where cached responses are kept."""
