"""The reference's own examples, copied byte for byte, run against a real daemon (issue 16)."""
