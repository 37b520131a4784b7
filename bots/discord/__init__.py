"""The Discord adapter (discord.py), in the shape of the Telegram one:
`adapter.DiscordAdapter` is what bots/app.py builds; `commands` and `controls` hold what users
can do, `requests` how a request reaches the service, `replies` how it answers, `client` and
`net` the talking to Discord."""
