"""A manual check of the provider error table against LiteLLM's proxy, a real OpenAI-compatible gateway.

Not part of the test stages: LiteLLM's proxy is about 170 MB of packages (FastAPI, boto3, polars...)
that the relay does not depend on. Install it in a virtualenv of its own and pass its ``litellm``:

    python3 -m venv /tmp/litellm && /tmp/litellm/bin/pip install 'litellm[proxy]'
    .venv/bin/python -m tests.manual.check_litellm --litellm /tmp/litellm/bin/litellm

It starts the fake OpenAI server (:mod:`tests.support.fake_openai`) as the proxy's upstream, then a
LiteLLM proxy on a free port of 127.0.0.1 with two models: ``fake-model`` (the fake upstream, which
answers each ``#status=N`` with that HTTP status and its own error message) and ``mock-model``
(LiteLLM's offline ``mock_response``). Through :class:`~server.llm.openai_provider.OpenAIProvider`
it then checks, printing one line per case:

- ``mock-model`` streams an answer that finishes (the gateway speaks the dialect the relay expects);
- each upstream status, relayed by LiteLLM, ends with the code of README's table, and ``bd.message``
  carries the upstream's own message (LiteLLM wraps it: ``litellm.NotFoundError: ... - <message>``);
- a model name the proxy does not know (LiteLLM's own 400) is ``provider_bad_request``;
- a stream the upstream cuts mid-answer reaches us as LiteLLM's error event with code ``"500"``:
  ``provider_error``, after the partial text.

Exit status 0 when every case agrees, 1 otherwise. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from server.llm.openai_provider import OpenAIProvider
from server.llm.provider import ChatMessage, Outcome, ProviderError
from server.settings import LLMSettings
from tests.support.fake_openai import FakeOpenAI, error_message, reply_text
from tests.support.redis_server import free_port

MASTER_KEY = "sk-check-litellm-master"
START_TIMEOUT_S = 120.0
#: upstream status -> the code the relay must give it, once LiteLLM has relayed it
STATUSES = {400: "provider_bad_request", 401: "provider_auth", 403: "provider_auth", 404: "provider_bad_request",
            408: "provider_timeout", 422: "provider_bad_request", 429: "provider_rate_limited",
            500: "provider_error", 502: "provider_unavailable", 503: "provider_unavailable",
            504: "provider_timeout", 418: "provider_error"}


def config(upstream: str) -> str:
    return f"""model_list:
  - model_name: fake-model
    litellm_params:
      model: openai/fake-model
      api_base: {upstream}
      api_key: sk-upstream-key-0123456789
  - model_name: mock-model
    litellm_params:
      model: openai/mock-model
      mock_response: "Hello from LiteLLM's mock"
general_settings:
  master_key: {MASTER_KEY}
litellm_settings:
  num_retries: 0
router_settings:
  disable_cooldowns: true
"""


def start_proxy(litellm: str, workdir: Path, upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    (workdir / "config.yaml").write_text(config(upstream))
    port = free_port()
    log = (workdir / "litellm.log").open("wb")
    proxy = subprocess.Popen([litellm, "--config", str(workdir / "config.yaml"), "--host", "127.0.0.1",
                              "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proxy.poll() is None:
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health/liveliness", timeout=2) as answer:
            if answer.status == 200:
                return proxy, f"http://127.0.0.1:{port}/v1"
        time.sleep(0.5)
    proxy.terminate()
    raise SystemExit(f"the LiteLLM proxy did not start: see {workdir / 'litellm.log'}")


async def ask(base_url: str, model: str, question: str) -> tuple[str, Outcome | ProviderError]:
    settings = LLMSettings.from_env({"LLM_PROVIDER": "openai", "OPENAI_BASE_URL": base_url,
                                     "OPENAI_API_KEY": MASTER_KEY, "LLM_MODEL": model, "LLM_MAX_RETRIES": "0",
                                     "LLM_TIMEOUT_S": "30"})
    provider = OpenAIProvider(settings)
    messages: list[ChatMessage] = [{"role": "user", "content": question}]
    text: list[str] = []
    try:
        async with contextlib.aclosing(provider.stream(messages)) as events:
            async for event in events:
                if isinstance(event, Outcome):
                    return "".join(text), event
                text.append(event)
    except ProviderError as error:
        return "".join(text), error
    finally:
        await provider.aclose()
    raise AssertionError("the stream ended without an outcome")


async def check(base_url: str) -> list[tuple[str, bool, str]]:
    """``(case, agrees, what happened)`` for each case."""
    results = []
    text, outcome = await ask(base_url, "mock-model", "hello")
    results.append(("mock-model answers", isinstance(outcome, Outcome) and outcome.finish_reason == "stop" and
                    bool(text), f"{text!r} {outcome}"))
    for status, code in STATUSES.items():
        _, outcome = await ask(base_url, "fake-model", f"#status={status}")
        said = error_message(status).split(":")[0]  # the 401's key is masked (by LiteLLM, and by us)
        agrees = isinstance(outcome, ProviderError) and outcome.code == code and said in outcome.message
        results.append((f"upstream {status} -> {code}", agrees, str(outcome)))
    _, outcome = await ask(base_url, "no-such-model", "hello")
    results.append(("unknown model -> provider_bad_request",
                    isinstance(outcome, ProviderError) and outcome.code == "provider_bad_request", str(outcome)))
    text, outcome = await ask(base_url, "fake-model", "#cut")
    results.append(("cut mid-stream -> provider_error after the partial text",
                    isinstance(outcome, ProviderError) and outcome.code == "provider_error" and text == reply_text(3),
                    f"{text!r} {outcome}"))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--litellm", required=True, help="the litellm executable (litellm[proxy] installed)")
    args = parser.parse_args()
    fake = FakeOpenAI().start()
    with tempfile.TemporaryDirectory(prefix="check-litellm-") as workdir:
        proxy, base_url = start_proxy(args.litellm, Path(workdir), fake.base_url)
        try:
            results = asyncio.run(check(base_url))
        finally:
            proxy.terminate()
            proxy.wait(10)
            fake.stop()
    for case, agrees, happened in results:
        print(f"{'ok  ' if agrees else 'FAIL'} {case}: {happened[:200]}")
    return 0 if all(agrees for _, agrees, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
