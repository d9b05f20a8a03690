"""The official OpenAI and Anthropic Python SDKs against a running nenya (mock upstream).

Run by tests/sdk.rs with NENYA_URL and NENYA_TOKEN set. Every check must parse the SDK's own
result objects without error; any failure raises and exits non-zero.
"""
import os
import sys

import anthropic
import openai

BASE = os.environ["NENYA_URL"]
TOKEN = os.environ["NENYA_TOKEN"]
EXPECTED = "".join(f"word{i} " for i in range(8))
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


oa = openai.OpenAI(base_url=BASE + "/v1", api_key=TOKEN, max_retries=0)

r = oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
check(r.choices[0].message.content == EXPECTED, f"openai text: {r}")
check(r.choices[0].finish_reason == "stop", "openai finish_reason")
check(r.usage is not None and r.usage.completion_tokens == 8, f"openai usage: {r.usage}")

text, usage, finish = "", None, None
stream = oa.chat.completions.create(
    model="gpt-4o",
    messages=[{"role": "user", "content": "hi"}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        text += c.delta.content or ""
        finish = c.finish_reason or finish
check(text == EXPECTED, f"openai streamed text: {text!r}")
check(finish == "stop", "openai streamed finish_reason")
check(usage is not None and usage.completion_tokens == 8, f"openai stream usage: {usage}")

try:
    openai.OpenAI(base_url=BASE + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    raise AssertionError("openai: wrong token accepted")
except openai.AuthenticationError as e:
    check(e.status_code == 401, "openai 401")
    check(e.body["error_kind"] == "unauthorized" if isinstance(e.body, dict) else False, f"openai error body: {e.body}")

an = anthropic.Anthropic(base_url=BASE, api_key=TOKEN, max_retries=0)
m = an.messages.create(
    model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
)
check(m.content[0].type == "text" and m.content[0].text == EXPECTED, f"anthropic text: {m}")
check(m.stop_reason == "end_turn", "anthropic stop_reason")
check(m.usage.output_tokens == 8, "anthropic usage")

with an.messages.stream(
    model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
) as s:
    streamed = "".join(s.text_stream)
    final = s.get_final_message()
check(streamed == EXPECTED, f"anthropic streamed text: {streamed!r}")
check(final.stop_reason == "end_turn", "anthropic streamed stop_reason")
check(final.usage.output_tokens == 8, f"anthropic streamed usage: {final.usage}")

try:
    anthropic.Anthropic(base_url=BASE, api_key="wrong", max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
    )
    raise AssertionError("anthropic: wrong token accepted")
except anthropic.AuthenticationError as e:
    check(e.status_code == 401, "anthropic 401")

try:
    an.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages="not a list")
    raise AssertionError("anthropic: bad request accepted")
except anthropic.BadRequestError as e:
    check(e.status_code == 400, "anthropic 400")

print(f"sdk checks passed: {checks}")
sys.exit(0)
