"""Cross-format with the official SDKs: the anthropic SDK against an OpenAI-format upstream and
the openai SDK against an Anthropic-format upstream, each streaming a tool call whose JSON
arguments arrive in many fragments. The SDK's assembled message must equal the expected one.

Env: NENYA_URL, NENYA_TOKEN, NENYA_ARGS (the JSON arguments the mock streams).
"""
import json
import os

import anthropic
import openai

BASE = os.environ["NENYA_URL"]
TOKEN = os.environ["NENYA_TOKEN"]
ARGS = json.loads(os.environ["NENYA_ARGS"])
TOOLS_A = [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}]
TOOLS_O = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


an = anthropic.Anthropic(base_url=BASE, api_key=TOKEN, max_retries=0)
with an.messages.stream(
    model="to-oai", max_tokens=256, tools=TOOLS_A,
    messages=[{"role": "user", "content": "weather in Paris?"}],
) as s:
    final = s.get_final_message()
types = [b.type for b in final.content]
check(types == ["thinking", "text", "tool_use"], f"anthropic blocks: {types}")
check(final.content[0].thinking == "The user wants weather.", "thinking text")
check(final.content[1].text == "Let me check.", "text")
tool = final.content[2]
check(tool.name == "get_weather" and tool.id == "call_mock_1", f"tool: {tool}")
check(tool.input == ARGS, f"assembled input {tool.input!r} != {ARGS!r}")
check(final.stop_reason == "tool_use", f"stop_reason {final.stop_reason}")
check(final.usage.output_tokens > 1, f"usage {final.usage}")

m = an.messages.create(model="to-oai", max_tokens=256, tools=TOOLS_A,
                       messages=[{"role": "user", "content": "weather?"}])
check([b.type for b in m.content] == ["thinking", "text", "tool_use"], f"plain blocks {m.content}")
check(m.content[2].input == ARGS, "plain tool input")
check(m.stop_reason == "tool_use", "plain stop_reason")

oa = openai.OpenAI(base_url=BASE + "/v1", api_key=TOKEN, max_retries=0)
stream = oa.chat.completions.create(
    model="to-ant", tools=TOOLS_O, stream=True, stream_options={"include_usage": True},
    messages=[{"role": "user", "content": "weather in Paris?"}],
)
calls, text, finish, usage, fragments = {}, "", None, None, 0
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        text += c.delta.content or ""
        for tc in c.delta.tool_calls or []:
            slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                slot["id"] = tc.id
            if tc.function and tc.function.name:
                slot["name"] = tc.function.name
            if tc.function and tc.function.arguments:
                slot["arguments"] += tc.function.arguments
                fragments += 1
        finish = c.finish_reason or finish
check(text == "Let me check.", f"openai text {text!r}")
check(list(calls) == [0], f"tool indices {list(calls)}")
check(calls[0]["id"] == "toolu_mock_1" and calls[0]["name"] == "get_weather", f"call {calls[0]}")
check(fragments >= 10, f"arguments arrived in {fragments} fragments")
check(json.loads(calls[0]["arguments"]) == ARGS, f"assembled arguments {calls[0]['arguments']!r}")
check(finish == "tool_calls", f"finish_reason {finish}")
check(usage is not None and usage.completion_tokens > 1, f"usage {usage}")

r = oa.chat.completions.create(model="to-ant", tools=TOOLS_O,
                               messages=[{"role": "user", "content": "weather?"}])
tc = r.choices[0].message.tool_calls[0]
check(json.loads(tc.function.arguments) == ARGS, "plain arguments")
check(r.choices[0].finish_reason == "tool_calls", "plain finish_reason")

print(f"cross checks passed: {checks}")
