"""Development and test helpers that the server never imports (the mock providers)."""
