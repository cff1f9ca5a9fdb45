"""Bearer tokens in, a frozen Principal out."""
