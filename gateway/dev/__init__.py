"""Development stack: the local OpenID provider, the Spanner emulator, the demo database."""
