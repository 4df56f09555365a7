"""The service: app assembly, settings, auth, metrics and CLI support.

Telephony, the agent console and emergency hand-off arrive with later issues.
"""
