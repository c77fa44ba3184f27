"""What the proxy tells operators: decision logs (and, later, metrics)."""
