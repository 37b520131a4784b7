"""A fake Telegram Bot API server on 127.0.0.1 that the real python-telegram-bot talks to.

It speaks the wire protocol the library uses (form or multipart POSTs to /bot{token}/{method},
file downloads from /file/bot{token}/{path}), keeps just enough state to answer like Telegram
(chats, messages, files, callback queries, commands), records every call, and can be told to
answer the next call of a method with a flood-control 429 (`fail_next`) or to drop its
connection (`drop_next`).

`fail_all` makes every call of a method fail until `heal` (a platform that keeps refusing).

Tests push updates with the builders (`user`, `private_chat`, `group_chat`, `add_file`,
`push_message`, `push_callback`): getUpdates long polls hand them out, or, once the bot has set
a webhook, they are POSTed to it with the secret token. Tests then wait on the record with
`wait_for` (`mark` to skip what came before; tests/fakes/server.py).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image, UnidentifiedImageError

from tests.fakes.server import MAX_BODY, Call, FakeServer, Upload

Json = dict[str, Any]

BOT_ID = 4242
BOT_USERNAME = "toonify_test_bot"
TOKEN = f"{BOT_ID}:FAKE-token-for-tests-only-0123456789"
THUMB_SIDE = 90
MAX_PHOTO_BYTES = 10_000_000
MAX_PHOTO_SIDES = 10_000
TELEGRAM_CALLBACK_TIMEOUT = 15.0


class ApiError(Exception):
    """An error answer: Telegram's error_code and description (and retry_after for 429)."""

    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.retry_after = retry_after

    def body(self) -> Json:
        body: Json = {"ok": False, "error_code": self.code, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


@dataclass(frozen=True)
class FakeFile:
    """A file the fake serves: `file_size` is what Telegram advertises, `data` what it sends."""

    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    file_size: int
    mime_type: str | None = None
    file_name: str | None = None

    def as_file(self) -> Json:
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_size": self.file_size,
            "file_path": self.file_path,
        }


@dataclass(frozen=True)
class _Failure:
    error: ApiError | None  # None: drop the connection without an answer


# Bot API parameters of type String: never decoded, even when they look like numbers.
_STRING_PARAMS = frozenset(
    {
        "text",
        "caption",
        "callback_query_id",
        "inline_message_id",
        "file_id",
        "photo",
        "document",
        "action",
        "url",
        "parse_mode",
        "secret_token",
        "language_code",
    }
)


def _decode(key: str, value: str) -> Any:
    """PTB sends strings as they are and everything else JSON-encoded."""
    if key in _STRING_PARAMS:
        return value
    if value[:1] in "{[" or value in ("true", "false", "null"):
        return json.loads(value)
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def entities_for(text: str) -> list[Json]:
    """Entities Telegram would attach: a leading /command and every @mention."""
    found: list[Json] = []
    position = 0
    for index, word in enumerate(text.split(" ")):
        length = _utf16_len(word)
        if index == 0 and word.startswith("/") and len(word) > 1:
            found.append({"type": "bot_command", "offset": 0, "length": length})
        elif word.startswith("@") and len(word) > 1:
            found.append({"type": "mention", "offset": position, "length": length})
        position += length + 1
    return found


def _image_size(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError):
        return (0, 0)


def _thumbnail(data: bytes) -> bytes:
    """A small JPEG of an image, as Telegram puts first in a photo's sizes."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            small = image.convert("RGB")
            small.thumbnail((THUMB_SIDE, THUMB_SIDE))
    except (UnidentifiedImageError, OSError):
        return data[:64]
    out = io.BytesIO()
    small.save(out, "JPEG")
    return out.getvalue()


class FakeTelegram(FakeServer):
    """The fake server. Use as `async with FakeTelegram() as api:` or via the fixture."""

    def __init__(self, token: str = TOKEN) -> None:
        super().__init__()
        self.token = token
        self.bot_user: Json = {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": "Toonify",
            "username": BOT_USERNAME,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.commands: list[Json] = []
        self.webhook_url = ""
        self._webhook_secret: str | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self.files: dict[str, FakeFile] = {}
        self.messages: dict[tuple[int, int], Json] = {}
        self._chats: dict[int, Json] = {}
        self._updates: deque[Json] = deque()
        self._callbacks: dict[str, float] = {}
        self._answered: set[str] = set()
        self._failures: dict[str, deque[_Failure]] = defaultdict(deque)
        self._always: dict[str, ApiError] = {}
        self._ids = itertools.count(1)
        self.url = ""
        self._methods: dict[str, Callable[[Json, dict[str, Upload]], Awaitable[Any]]] = {
            "getMe": self._get_me,
            "logOut": self._log_out,
            "close": self._close,
            "deleteWebhook": self._delete_webhook,
            "setWebhook": self._set_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "getUpdates": self._get_updates,
            "getFile": self._get_file,
            "sendMessage": self._send_message,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "editMessageText": self._edit_message_text,
            "editMessageCaption": self._edit_message_caption,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "editMessageMedia": self._edit_message_media,
            "deleteMessage": self._delete_message,
            "answerCallbackQuery": self._answer_callback_query,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "sendChatAction": self._send_chat_action,
        }

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/bot{token}/{method}", self._on_method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._on_download)
        self.url = await self._listen(app)

    async def stop(self) -> None:
        for task in list(self._deliveries):
            task.cancel()
        await self._stop_listening()

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """For `ApplicationBuilder().base_url(...)`: the library appends the token."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        """For `ApplicationBuilder().base_file_url(...)`."""
        return f"{self.url}/file/bot"

    # ---- builders for the test side -------------------------------------------------------

    def user(self, user_id: int, first_name: str = "Ada", username: str | None = None) -> Json:
        user: Json = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        return user

    def private_chat(self, user: Json) -> Json:
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        self._chats[chat["id"]] = chat
        return chat

    def group_chat(self, chat_id: int = -1001234567890, title: str = "Friends") -> Json:
        chat = {"id": chat_id, "type": "supergroup", "title": title}
        self._chats[chat_id] = chat
        return chat

    def add_file(
        self,
        data: bytes,
        *,
        file_size: int | None = None,
        mime_type: str | None = None,
        file_name: str | None = None,
    ) -> FakeFile:
        """Register a downloadable file; `file_size` overrides the size Telegram advertises.

        The file_path is relative and carries a random part, so it never names a file on this
        disk (the library would read such a file locally instead of downloading it).
        """
        unique = uuid.uuid4().hex
        folder = "photos" if mime_type is None else "documents"
        suffix = (file_name or "file.jpg").rsplit(".", 1)[-1]
        fake = FakeFile(
            file_id=f"file-{unique}",
            file_unique_id=unique[:16],
            file_path=f"{folder}/fake-{unique}.{suffix}",
            data=data,
            file_size=len(data) if file_size is None else file_size,
            mime_type=mime_type,
            file_name=file_name,
        )
        self.files[fake.file_id] = fake
        return fake

    def photo_sizes(self, photo: FakeFile) -> list[Json]:
        """A photo as Telegram sends it: sizes smallest first, the given file last."""
        thumb = self.add_file(_thumbnail(photo.data))
        sizes = []
        for item in (thumb, photo):
            width, height = _image_size(item.data)
            sizes.append(
                {
                    "file_id": item.file_id,
                    "file_unique_id": item.file_unique_id,
                    "width": width,
                    "height": height,
                    "file_size": item.file_size,
                }
            )
        return sizes

    def push_message(
        self,
        chat: Json,
        sender: Json,
        *,
        text: str | None = None,
        caption: str | None = None,
        photo: FakeFile | None = None,
        document: FakeFile | None = None,
        reply_to: Json | None = None,
        **fields: Json,
    ) -> Json:
        """Queue a message update; entities for a leading /command and @mentions are added.

        `fields` are further Message fields as Telegram sends them (video, sticker, ...).
        """
        message = self._message(chat, sender)
        message.update(fields)
        if text is not None:
            message["text"] = text
            if entities := entities_for(text):
                message["entities"] = entities
        if caption is not None:
            message["caption"] = caption
            if entities := entities_for(caption):
                message["caption_entities"] = entities
        if photo is not None:
            message["photo"] = self.photo_sizes(photo)
        if document is not None:
            message["document"] = self._document(document)
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        self._push({"message": message})
        return message

    def push_callback(self, sender: Json, message: Json, data: str) -> str:
        """Queue a button press on one of the bot's messages; returns the query id."""
        query_id = str(next(self._ids))
        self._callbacks[query_id] = time.monotonic()
        query = {
            "id": query_id,
            "from": sender,
            "chat_instance": str(message["chat"]["id"]),
            "message": message,
            "data": data,
        }
        self._push({"callback_query": query})
        return query_id

    def fail_next(self, method: str, code: int = 429, retry_after: int = 1) -> None:
        """Answer the next call of `method` with an error (flood control by default)."""
        if code == 429:
            error = ApiError(429, f"Too Many Requests: retry after {retry_after}", retry_after)
        else:
            error = ApiError(code, f"Injected error {code}")
        self._failures[method].append(_Failure(error))

    def fail_all(self, method: str, code: int) -> None:
        """Answer every call of `method` with error `code` until `heal(method)`."""
        self._always[method] = ApiError(code, f"Injected error {code}")

    def heal(self, method: str) -> None:
        self._always.pop(method, None)

    def drop_next(self, method: str) -> None:
        """Close the connection of the next call of `method` without answering."""
        self._failures[method].append(_Failure(None))

    # ---- the server side ------------------------------------------------------------------

    def _push(self, update: Json) -> None:
        """Queue an update for getUpdates, or POST it to the webhook when one is set."""
        update["update_id"] = next(self._ids)
        if self.webhook_url:
            task = asyncio.create_task(self._post_to_webhook(update))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
            return
        self._updates.append(update)
        self.changed()

    async def _post_to_webhook(self, update: Json) -> None:
        headers = {}
        if self._webhook_secret:
            headers["X-Telegram-Bot-Api-Secret-Token"] = self._webhook_secret
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.webhook_url, json=update, headers=headers) as response,
        ):
            self.record(Call("webhook", update, status=response.status))

    async def _read(self, request: web.Request) -> tuple[Json, dict[str, Upload]]:
        params: Json = {}
        files: dict[str, Upload] = {}
        if request.can_read_body:
            for key, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    files[key] = Upload(value.filename, value.content_type, value.file.read())
                else:
                    params[key] = _decode(key, str(value))
        return params, files

    async def _on_method(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        params, files = await self._read(request)
        call = Call(method, params, files)
        if request.match_info["token"] != self.token:
            return await self._answer(call, ApiError(401, "Unauthorized"))
        if method in self._always:
            return await self._answer(call, self._always[method])
        if self._failures[method]:
            failure = self._failures[method].popleft()
            if failure.error is None:
                call.status = 0
                self.record(call)
                assert request.transport is not None
                request.transport.close()
                raise asyncio.CancelledError
            return await self._answer(call, failure.error)
        handler = self._methods.get(method)
        if handler is None:
            return await self._answer(call, ApiError(404, "Not Found: method not found"))
        try:
            result = await handler(params, files)
        except ApiError as error:
            return await self._answer(call, error)
        call.result = result
        return await self._answer(call, None)

    async def _answer(self, call: Call, error: ApiError | None) -> web.Response:
        if error is not None:
            call.status = error.code
            self.record(call)
            return web.json_response(error.body(), status=error.code)
        self.record(call)
        return web.json_response({"ok": True, "result": call.result})

    async def _on_download(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        found = next((f for f in self.files.values() if f.file_path == path), None)
        ok = request.match_info["token"] == self.token and found is not None
        self.record(Call("download", {"file_path": path}, status=200 if ok else 404))
        if not ok or found is None:
            return web.json_response(ApiError(404, "Not Found").body(), status=404)
        return web.Response(body=found.data, content_type="application/octet-stream")

    # ---- state helpers --------------------------------------------------------------------

    def _message(self, chat: Json, sender: Json) -> Json:
        message = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": chat,
            "from": sender,
        }
        self.messages[(chat["id"], message["message_id"])] = message
        return message

    def _document(self, fake: FakeFile) -> Json:
        document: Json = {
            "file_id": fake.file_id,
            "file_unique_id": fake.file_unique_id,
            "file_size": fake.file_size,
        }
        if fake.mime_type:
            document["mime_type"] = fake.mime_type
        if fake.file_name:
            document["file_name"] = fake.file_name
        return document

    def _chat(self, params: Json) -> Json:
        chat_id = params.get("chat_id")
        if chat_id is None:
            raise ApiError(400, "Bad Request: chat_id is empty")
        if chat_id not in self._chats:
            raise ApiError(400, "Bad Request: chat not found")
        return self._chats[chat_id]

    def _stored(self, params: Json) -> Json:
        key = (self._chat(params)["id"], params.get("message_id"))
        if key not in self.messages:
            raise ApiError(400, "Bad Request: message to edit not found")
        return self.messages[key]

    def _bot_message(self, params: Json, **content: Any) -> Json:
        """A message the bot sends: reply, markup and content as the call asked."""
        message = self._message(self._chat(params), self.bot_user)
        reply = params.get("reply_parameters") or {}
        reply_id = reply.get("message_id", params.get("reply_to_message_id"))
        if reply_id is not None:
            original = self.messages.get((message["chat"]["id"], reply_id))
            if original is None:
                raise ApiError(400, "Bad Request: message to be replied not found")
            message["reply_to_message"] = original
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        message.update(content)
        return message

    def _input_file(self, params: Json, files: dict[str, Upload], key: str) -> FakeFile:
        """The file a send call carries: an upload, an attach:// reference or a file_id."""
        value = params.get(key)
        if key in files:
            upload = files[key]
        elif isinstance(value, str) and value.startswith("attach://"):
            upload = files.get(value.removeprefix("attach://"))
            if upload is None:
                raise ApiError(400, f"Bad Request: file {value} is missing")
        elif isinstance(value, str) and value in self.files:
            return self.files[value]
        else:
            raise ApiError(400, f"Bad Request: there is no {key} in the request")
        return self.add_file(upload.data, mime_type=upload.content_type, file_name=upload.filename)

    def _check_photo(self, photo: FakeFile) -> FakeFile:
        """Telegram's limits on an uploaded photo."""
        if photo.file_size > MAX_PHOTO_BYTES:
            raise ApiError(400, "Bad Request: PHOTO_SAVE_FILE_INVALID")
        if sum(_image_size(photo.data)) > MAX_PHOTO_SIDES:
            raise ApiError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        return photo

    def _caption(self, params: Json) -> Json:
        return {"caption": params["caption"]} if "caption" in params else {}

    # ---- Bot API methods ------------------------------------------------------------------

    async def _get_me(self, params: Json, files: dict[str, Upload]) -> Json:
        return self.bot_user

    async def _log_out(self, params: Json, files: dict[str, Upload]) -> bool:
        return True

    async def _close(self, params: Json, files: dict[str, Upload]) -> bool:
        return True

    async def _delete_webhook(self, params: Json, files: dict[str, Upload]) -> bool:
        self.webhook_url = ""
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    async def _set_webhook(self, params: Json, files: dict[str, Upload]) -> bool:
        self.webhook_url = str(params.get("url", ""))
        self._webhook_secret = params.get("secret_token")
        return True

    async def _get_webhook_info(self, params: Json, files: dict[str, Upload]) -> Json:
        return {"url": self.webhook_url, "has_custom_certificate": False, "pending_update_count": 0}

    async def _get_updates(self, params: Json, files: dict[str, Upload]) -> list[Json]:
        """Long poll: confirm updates below `offset`, then wait up to `timeout` for new ones."""
        if self.webhook_url:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active")
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        while self._updates and self._updates[0]["update_id"] < offset:
            self._updates.popleft()
        if not self._updates:
            try:
                async with asyncio.timeout(float(params.get("timeout") or 0)):
                    while not self._updates:
                        await self.next_change()
            except TimeoutError:
                return []
        return list(itertools.islice(self._updates, limit))

    async def _get_file(self, params: Json, files: dict[str, Upload]) -> Json:
        fake = self.files.get(str(params.get("file_id")))
        if fake is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        if fake.file_size > 20 * 1024 * 1024:
            raise ApiError(400, "Bad Request: file is too big")
        return fake.as_file()

    async def _send_message(self, params: Json, files: dict[str, Upload]) -> Json:
        text = str(params.get("text", ""))
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        return self._bot_message(params, text=text)

    async def _send_photo(self, params: Json, files: dict[str, Upload]) -> Json:
        photo = self._check_photo(self._input_file(params, files, "photo"))
        return self._bot_message(params, photo=self.photo_sizes(photo), **self._caption(params))

    async def _send_document(self, params: Json, files: dict[str, Upload]) -> Json:
        document = self._input_file(params, files, "document")
        return self._bot_message(params, document=self._document(document), **self._caption(params))

    async def _edit_message_text(self, params: Json, files: dict[str, Upload]) -> Json:
        message = self._stored(params)
        text = str(params.get("text", ""))
        markup = params.get("reply_markup")
        if text == message.get("text") and markup == message.get("reply_markup"):
            raise ApiError(400, "Bad Request: message is not modified")
        message["text"] = text
        message.pop("reply_markup", None)
        if markup is not None:
            message["reply_markup"] = markup
        return message

    async def _edit_message_caption(self, params: Json, files: dict[str, Upload]) -> Json:
        message = self._stored(params)
        message.update(self._caption(params))
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        return message

    async def _edit_message_reply_markup(self, params: Json, files: dict[str, Upload]) -> Json:
        message = self._stored(params)
        message.pop("reply_markup", None)
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        return message

    async def _edit_message_media(self, params: Json, files: dict[str, Upload]) -> Json:
        message = self._stored(params)
        media = params.get("media")
        if not isinstance(media, dict) or media.get("type") not in ("photo", "document"):
            raise ApiError(400, "Bad Request: can't parse InputMedia")
        fake = self._input_file(media, files, "media")
        for key in ("photo", "document", "caption"):
            message.pop(key, None)
        if media["type"] == "photo":
            message["photo"] = self.photo_sizes(self._check_photo(fake))
        else:
            message["document"] = self._document(fake)
        message.update(self._caption(media))
        message.pop("reply_markup", None)
        if "reply_markup" in params:
            message["reply_markup"] = params["reply_markup"]
        return message

    async def _delete_message(self, params: Json, files: dict[str, Upload]) -> bool:
        key = (self._chat(params)["id"], params.get("message_id"))
        if self.messages.pop(key, None) is None:
            raise ApiError(400, "Bad Request: message to delete not found")
        return True

    async def _answer_callback_query(self, params: Json, files: dict[str, Upload]) -> bool:
        query_id = str(params.get("callback_query_id"))
        sent = self._callbacks.get(query_id)
        late = sent is not None and time.monotonic() - sent > TELEGRAM_CALLBACK_TIMEOUT
        if sent is None or late or query_id in self._answered:
            raise ApiError(400, "Bad Request: query is too old and response timeout expired")
        self._answered.add(query_id)
        return True

    async def _set_my_commands(self, params: Json, files: dict[str, Upload]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise ApiError(400, "Bad Request: commands must be an array")
        self.commands = commands
        return True

    async def _get_my_commands(self, params: Json, files: dict[str, Upload]) -> list[Json]:
        return self.commands

    async def _delete_my_commands(self, params: Json, files: dict[str, Upload]) -> bool:
        self.commands = []
        return True

    async def _send_chat_action(self, params: Json, files: dict[str, Upload]) -> bool:
        self._chat(params)
        if not params.get("action"):
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True


def replies_to(message: Json) -> Callable[[Call], bool]:
    """For `wait_for`: the call answers `message` (sends a reply to it)."""

    def check(call: Call) -> bool:
        reply = call.params.get("reply_parameters") or {}
        return bool(reply.get("message_id") == message["message_id"])

    return check


def buttons(call: Call) -> list[Json]:
    """Every inline button of the reply_markup a call sent, row by row."""
    markup = call.params.get("reply_markup") or {}
    rows: Iterable[list[Json]] = markup.get("inline_keyboard", [])
    return [button for row in rows for button in row]


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    """A started fake Bot API server, stopped after the test."""
    async with FakeTelegram() as fake:
        yield fake
