"""AI summaries through OpenRouter (or any OpenAI-compatible chat API), with the openai SDK.

Pipeline (`prepare`): redact every log line (`redact.Redactor`, built-in kinds plus
`summarizer.redact_patterns`), compress them to `summarizer.max_input_tokens`
(`compress.compress_logs`), build the messages (`prompt.build_messages`), redact the whole user
message once more (the task table's facts and the signals), and hash the messages: the hash keys
stored summaries. Nothing unredacted ever reaches the client.

Request (`complete`): ``chat.completions.create(stream=True, stream_options={"include_usage":
True}, extra_body={"usage": {"include": True}})``; OpenRouter's usage accounting then reports
``usage.cost`` in the final chunk, next to the token counts. The client sends OpenRouter's
attribution headers (``HTTP-Referer`` = `app_url` when set, ``X-Title`` = `app_title`).

Failures raise `SummarizerError` (a `ServiceUnavailable`) with a plain-words message:

- no key: "no OpenRouter API key (set summarizer.api_key or OPENROUTER_API_KEY)"
- 401 / 402 / 404: a rejected key / no credit left / an unknown model
- 429, 5xx, 408 and connection errors are retried before the first text chunk arrived: at most
  `max_tries` tries in all, exponential backoff with jitter (``base * 2**(n-1)``, scaled by a
  random factor in [0.5, 1.5), capped), at least the server's ``Retry-After``; a
  ``Retry-After`` beyond `max_retry_after`, or a wait past the deadline, gives up at once.
- `summarizer.timeout` bounds the whole completion, retries and waits included; a timeout is not
  retried (the deadline has passed).
- a stream that breaks off after text arrived is not retried (the text was already shown).

The openai package is imported on first use (it takes ~0.4 s), off the event loop, with the TLS
context (~30 ms, then shared); `warm_up()` does both ahead of time. Each completion uses its own
client (0.1 ms to build with the shared context) and closes it, so no connection outlives a
summary and nothing needs closing when the backend closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import random
import ssl
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ..config import SummarizerSettings, format_duration
from ..errors import ServiceUnavailable
from ..models import Task
from .compress import CompressedLogs, compress_logs
from .prompt import PROMPT_VERSION, ChatMessage, build_messages
from .redact import Redactor

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = [
    "NO_KEY_MESSAGE",
    "CompletionStream",
    "OpenRouterSummarizer",
    "PreparedInput",
    "SummarizerError",
    "Usage",
    "prepare_input",
]

NO_KEY_MESSAGE = "no OpenRouter API key (set summarizer.api_key or OPENROUTER_API_KEY)"


class SummarizerError(ServiceUnavailable):
    """The AI summary could not be made; the message says why in plain words."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status, when there was one
        self.retryable = retryable
        self.retry_after = retry_after  # seconds the server asked to wait


@dataclass(frozen=True, slots=True)
class Usage:
    """What one completion consumed, from the stream's final usage chunk."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None  # None when the service reported no cost


@dataclass(frozen=True, slots=True)
class PreparedInput:
    """The redacted, compressed request of one summary, and its hash."""

    messages: list[ChatMessage]
    input_hash: str  # sha256 (hex) of the messages and the prompt version
    logs: CompressedLogs
    redactions: int  # secrets replaced, in the logs and in the facts


def prepare_input(
    task: Task,
    lines: Sequence[str],
    signals: Sequence[str] = (),
    *,
    budget_tokens: int,
    redactor: Redactor,
) -> PreparedInput:
    """Redact, compress, build the messages and hash them (CPU only; see the module docstring)."""
    clean, found = redactor.redact_all(lines)
    logs = compress_logs(clean, budget_tokens)
    messages = build_messages(task, logs, signals)
    for m in messages:
        m["content"], n = redactor.redact(m["content"])
        found += n
    digest = hashlib.sha256(orjson.dumps([PROMPT_VERSION, messages])).hexdigest()
    return PreparedInput(messages=messages, input_hash=digest, logs=logs, redactions=found)


class CompletionStream:
    """One streamed completion: `async for text in stream`. Afterwards `usage` holds the tokens
    and cost the service reported, `attempts` the number of requests made."""

    def __init__(
        self, summarizer: OpenRouterSummarizer, messages: Sequence[ChatMessage], model: str
    ) -> None:
        self._summarizer = summarizer
        self.messages = list(messages)
        self.model = model
        self.usage: Usage | None = None
        self.attempts = 0

    def __aiter__(self) -> AsyncIterator[str]:
        return self._summarizer._stream(self)


def _retry_after(headers: Any) -> float | None:
    """Seconds from Retry-After (seconds or an HTTP date) or retry-after-ms, if present."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _body_message(body: object) -> str:
    if isinstance(body, dict):
        msg = body.get("message")
        if isinstance(msg, str) and msg:
            return msg[:300]
    return ""


class OpenRouterSummarizer:
    """`ports.Summarizer` through OpenRouter; see the module docstring."""

    name = "openrouter"

    def __init__(
        self,
        settings: SummarizerSettings,
        *,
        max_tries: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        max_retry_after: float = 20.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.model = settings.model
        self.redactor = Redactor(settings.redact_patterns)
        self.max_tries = max(1, max_tries)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._jitter = jitter
        self.last_usage: Usage | None = None  # of the newest completion that finished
        self._ssl: ssl.SSLContext | None = None
        self._load_lock = asyncio.Lock()

    # ------------------------------------------------------------ input

    def prepare(
        self, task: Task, lines: Sequence[str], signals: Sequence[str] = ()
    ) -> PreparedInput:
        """The redacted, compressed messages for `task` (CPU-bound: run it in a thread)."""
        return prepare_input(
            task,
            lines,
            signals,
            budget_tokens=self.settings.max_input_tokens,
            redactor=self.redactor,
        )

    # ------------------------------------------------------------ ports.Summarizer

    async def summarize(self, task: Task, lines: Sequence[str]) -> AsyncIterator[str]:
        prepared = await asyncio.to_thread(self.prepare, task, lines)
        async for text in self.complete(prepared.messages):
            yield text

    # ------------------------------------------------------------ completion

    def complete(
        self, messages: Sequence[ChatMessage], *, model: str | None = None
    ) -> CompletionStream:
        """A streamed completion of already prepared (redacted) `messages`."""
        return CompletionStream(self, messages, model or self.model)

    async def warm_up(self) -> None:
        """Import the openai package and build the TLS context now, off the event loop."""
        await self._tls()

    async def aclose(self) -> None:
        """Nothing to release: each completion opens and closes its own client."""

    def _load(self) -> ssl.SSLContext:
        import httpx2
        import openai  # noqa: F401  # ~0.4 s: only when a summary is asked for

        return httpx2.create_ssl_context()  # ~30 ms: built once, shared by every client

    async def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            async with self._load_lock:
                if self._ssl is None:
                    if "openai" in sys.modules:
                        self._ssl = self._load()
                    else:
                        self._ssl = await asyncio.to_thread(self._load)
        return self._ssl

    def _new_client(self, tls: ssl.SSLContext) -> AsyncOpenAI:
        """A client for one completion (closed after it): no pooled connection outlives a
        summary, so nothing is left open when the backend closes, on whatever event loop."""
        import openai

        s = self.settings
        headers = {"X-Title": s.app_title} if s.app_title else {}
        if s.app_url:
            headers["HTTP-Referer"] = s.app_url
        return openai.AsyncOpenAI(
            base_url=s.base_url,
            api_key=s.api_key,
            timeout=s.timeout,
            max_retries=0,  # retries are ours: they must stop once text was shown
            default_headers=headers,
            http_client=openai.DefaultAsyncHttpxClient(verify=tls, timeout=s.timeout),
        )

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.backoff_cap, self.backoff_base * 2.0 ** (attempt - 1))
        delay *= 0.5 + self._jitter()
        return max(delay, retry_after or 0.0)

    async def _stream(self, cs: CompletionStream) -> AsyncIterator[str]:
        s = self.settings
        if not s.api_key:
            raise SummarizerError(NO_KEY_MESSAGE)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.timeout
        client = self._new_client(await self._tls())
        try:
            async with contextlib.aclosing(self._attempts(cs, client, loop, deadline)) as texts:
                async for text in texts:
                    yield text
        finally:
            await client.close()

    async def _attempts(
        self,
        cs: CompletionStream,
        client: AsyncOpenAI,
        loop: asyncio.AbstractEventLoop,
        deadline: float,
    ) -> AsyncGenerator[str, None]:
        s = self.settings
        import openai

        messages: Any = cs.messages  # our TypedDicts; the SDK's are a union of narrower ones

        while True:
            cs.attempts += 1
            shown = False
            try:
                async with asyncio.timeout_at(deadline):
                    stream = await client.chat.completions.create(
                        model=cs.model,
                        messages=messages,
                        stream=True,
                        stream_options={"include_usage": True},
                        extra_body={"usage": {"include": True}},
                    )
                try:
                    iterator = stream.__aiter__()
                    while True:
                        try:
                            async with asyncio.timeout_at(deadline):
                                chunk = await iterator.__anext__()
                        except StopAsyncIteration:
                            break
                        if chunk.usage is not None:
                            cs.usage = _usage(chunk.usage)
                        for choice in chunk.choices:
                            text = choice.delta.content if choice.delta is not None else None
                            if text:
                                shown = True
                                yield text  # outside the timeout block: the consumer's time
                finally:
                    await stream.close()
            except TimeoutError:
                raise SummarizerError(
                    f"OpenRouter did not finish within {format_duration(s.timeout)}"
                    " (summarizer.timeout)"
                ) from None
            except openai.OpenAIError as exc:
                err = self._error(exc, cs.model)
                if shown:
                    raise SummarizerError(
                        f"the answer broke off: {err}", status=err.status
                    ) from exc
                if not err.retryable or cs.attempts >= self.max_tries:
                    raise self._final(err, cs.attempts) from exc
                if err.retry_after is not None and err.retry_after > self.max_retry_after:
                    raise SummarizerError(
                        f"{err} and asks to wait {err.retry_after:.0f}s", status=err.status
                    ) from exc
                delay = self._backoff(cs.attempts, err.retry_after)
                if loop.time() + delay >= deadline:
                    raise self._final(err, cs.attempts) from exc
                await self._sleep(delay)
                continue
            if not shown:
                raise SummarizerError(f"the model {cs.model} returned an empty answer")
            self.last_usage = cs.usage
            return

    @staticmethod
    def _final(err: SummarizerError, attempts: int) -> SummarizerError:
        if attempts <= 1:
            return err
        return SummarizerError(f"{err} (gave up after {attempts} tries)", status=err.status)

    def _error(self, exc: Exception, model: str) -> SummarizerError:
        """A plain-words SummarizerError for an openai exception."""
        import openai

        s = self.settings
        if isinstance(exc, openai.APITimeoutError):
            return SummarizerError(
                f"OpenRouter did not answer within {format_duration(s.timeout)}"
                " (summarizer.timeout)"
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            why = f": {cause}" if cause is not None and str(cause) else ""
            return SummarizerError(f"cannot reach OpenRouter at {s.base_url}{why}", retryable=True)
        if isinstance(exc, openai.APIStatusError):
            code = exc.status_code
            detail = _body_message(exc.body)
            after = _retry_after(exc.response.headers)
            if code == 401:
                msg = "OpenRouter rejected the API key (summarizer.api_key / OPENROUTER_API_KEY)"
            elif code == 402:
                msg = "no credit left on the OpenRouter account"
            elif code == 404:
                msg = f"unknown model {model} (summarizer.model)"
            elif code == 429:
                msg = "OpenRouter is rate limiting requests (HTTP 429)"
            elif code == 403:
                msg = "OpenRouter refused the request (HTTP 403)" + (
                    f": {detail}" if detail else ""
                )
            elif code >= 500 or code == 408:
                msg = f"OpenRouter answered HTTP {code} (a server-side error)"
            else:
                msg = f"OpenRouter rejected the request (HTTP {code})" + (
                    f": {detail}" if detail else ""
                )
            retry = code in (408, 429) or code >= 500
            return SummarizerError(msg, status=code, retryable=retry, retry_after=after)
        if isinstance(exc, openai.APIError):  # an error event inside a 200 stream
            body = exc.body
            raw = body.get("code") if isinstance(body, dict) else None
            ecode = raw if isinstance(raw, int) else None
            retry = ecode is not None and (ecode in (408, 429) or ecode >= 500)
            detail = _body_message(body) or str(exc)
            return SummarizerError(
                f"OpenRouter reported an error: {detail}", status=ecode, retryable=retry
            )
        return SummarizerError(f"the OpenRouter request failed: {exc}")


def _usage(u: Any) -> Usage:
    cost = getattr(u, "cost", None)  # OpenRouter usage accounting: an extra field
    return Usage(
        input_tokens=int(getattr(u, "prompt_tokens", 0) or 0),
        output_tokens=int(getattr(u, "completion_tokens", 0) or 0),
        cost_usd=float(cost) if isinstance(cost, int | float) else None,
    )
