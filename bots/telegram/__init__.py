"""The Telegram adapter (python-telegram-bot), in the shape of the Discord one:
`adapter.TelegramAdapter` is what bots/app.py builds; `handlers` and `controls` hold what users
can do, `requests` how a request reaches the service, `replies` how it answers, `net` and
`updates` the talking to Telegram."""
