"""Test support: exact enumeration of output laws (exact) and toy targets and drafters (toy). Imports only the core."""
