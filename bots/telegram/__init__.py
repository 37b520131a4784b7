"""The Telegram adapter (python-telegram-bot): `adapter.TelegramAdapter` is what bots/app.py
builds; `handlers` holds what each update does, `controls` the buttons, `replies` how a request
answers, `net` and `updates` the talking to Telegram."""
