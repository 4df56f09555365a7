"""Citizen card: identity, cards, signed QR tokens, wallet ledger, partner API (later issue)."""
