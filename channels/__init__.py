"""Written channels (WeChat, Telegram, city app, Open311) feeding the one queue (later issue)."""
