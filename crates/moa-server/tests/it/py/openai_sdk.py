"""The official openai SDK against `moa serve`, as an application would use it. Prints one JSON
object of what it saw; the Rust test checks it and what the upstream received."""
import json
import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["MOA_BASE_URL"], api_key="sk-moa-test", max_retries=0)
seen = {"sdk": openai.__version__}

# Content as parts, sampling fields, and the moa extension through extra_body.
whole = client.chat.completions.create(
    model="mini",
    messages=[
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "text", "text": "Why is the sky blue?"}]},
    ],
    temperature=0.2,
    top_p=0.9,
    stop=["\n\n"],
    seed=7,
    max_completion_tokens=50,
    user="user-1",
    extra_body={"moa": {"include_proposals": True}},
)
seen["whole"] = {
    "content": whole.choices[0].message.content,
    "finish_reason": whole.choices[0].finish_reason,
    "total_tokens": whole.usage.total_tokens,
    "proposals": len(whole.model_extra["moa"]["layers"][0]["calls"]),
}

# Streamed, with usage.
text, usage = "", None
for chunk in client.chat.completions.create(
    model="mini",
    messages=[{"role": "user", "content": "Why?"}],
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage.total_tokens
seen["stream"] = {"content": text, "total_tokens": usage}

# An agent loop's second request: the assistant's tool call and the tool's result.
history = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "-3C, snow"},
]
after_tool = client.chat.completions.create(
    model="mini", messages=history, extra_body={"moa": {"proposers_after_tool_result": True}}
)
seen["after_tool"] = after_tool.choices[0].message.content

# A two-step tool loop, as an agent runs it: the aggregator calls the tool, the app runs it and
# sends the result back, the aggregator answers. Whole, then streamed.
tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
loop = {}
for mode in ("whole", "stream"):
    messages = [{"role": "user", "content": "Weather in Oslo? (" + mode + ")"}]
    if mode == "whole":
        first = client.chat.completions.create(model="mini", messages=messages, tools=tools)
        message = first.choices[0].message
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in message.tool_calls]
        reason = first.choices[0].finish_reason
    else:
        calls, reason = [], None
        for chunk in client.chat.completions.create(model="mini", messages=messages, tools=tools, stream=True):
            if not chunk.choices:
                continue
            for piece in chunk.choices[0].delta.tool_calls or []:
                while len(calls) <= piece.index:
                    calls.append({"id": None, "name": "", "arguments": ""})
                if piece.id:
                    calls[piece.index]["id"] = piece.id
                if piece.function and piece.function.name:
                    calls[piece.index]["name"] += piece.function.name
                if piece.function and piece.function.arguments:
                    calls[piece.index]["arguments"] += piece.function.arguments
            reason = chunk.choices[0].finish_reason or reason
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls]})
    result = json.loads(calls[0]["arguments"])["city"] + ": -3C, snow"
    messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": result})
    second = client.chat.completions.create(model="mini", messages=messages, tools=tools)
    loop[mode] = {"calls": calls, "finish_reason": reason, "answer": second.choices[0].message.content}
seen["tool_loop"] = loop

# What moa cannot honour is refused with a 400 that names it.
refusals = {}
for name, kwargs in {
    "n": {"n": 9},
    "tool_choice": {"tool_choice": "required"},
    "response_format": {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 12}}}},
}.items():
    try:
        client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "x"}], **kwargs)
        refusals[name] = "accepted"
    except openai.BadRequestError as e:
        refusals[name] = e.body["message"] if isinstance(e.body, dict) else str(e)
seen["refusals"] = refusals

two = client.chat.completions.create(model="mini", messages=[{"role": "user", "content": "Two?"}], n=2)
seen["n2"] = [c.index for c in two.choices]

try:
    client.chat.completions.create(model="no-such-preset", messages=[{"role": "user", "content": "x"}])
except openai.NotFoundError as e:
    seen["not_found"] = e.body["code"]

# Structured output: a json_schema answer (the fake's first is fenced and incomplete; moa
# repairs it once), and json_object.
schema = {"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "integer"}},
          "required": ["city", "celsius"], "additionalProperties": False}
structured = client.chat.completions.create(
    model="mini", messages=[{"role": "user", "content": "Oslo weather as JSON"}],
    response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema, "strict": True}},
)
seen["structured"] = json.loads(structured.choices[0].message.content)
as_object = client.chat.completions.create(
    model="mini", messages=[{"role": "user", "content": "Oslo weather as JSON"}],
    response_format={"type": "json_object"},
)
seen["json_object"] = json.loads(as_object.choices[0].message.content)

# The aggregator's log probabilities, whole and through the SDK's own stream accumulator.
asked = dict(model="mini", messages=[{"role": "user", "content": "Why?"}], logprobs=True, top_logprobs=2)
whole = client.chat.completions.create(**asked).choices[0].logprobs.content
with client.chat.completions.stream(**asked) as stream:
    final = stream.get_final_completion().choices[0]
seen["logprobs"] = {
    "whole": "".join(t.token for t in whole),
    "first_top": [[t.token, t.logprob] for t in whole[0].top_logprobs],
    "stream": "".join(t.token for t in final.logprobs.content),
    "stream_text": final.message.content,
}

seen["models"] = [m.id for m in client.models.list()]
json.dump(seen, sys.stdout)
