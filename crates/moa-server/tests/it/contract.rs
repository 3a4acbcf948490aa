//! The chat-completions contract as clients use it: content parts, an agent loop's history,
//! sampling fields for the aggregator, and every other field honoured, ignored as harmless, or
//! refused by name.

use serde_json::{json, Value};

use moa_testkit::Reply;

use super::{start, ServerConfig, Setup};

fn request(extra: Value) -> Value {
    let mut body = json!({"model": "mini", "messages": [{"role": "user", "content": "Why?"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn status_and_message(s: &Setup, body: &Value) -> (u16, String) {
    let response = s.post(body).await;
    let status = response.status().as_u16();
    let json: Value = response.json().await.unwrap();
    let message = json["error"]["message"].as_str().unwrap_or_default();
    (status, message.to_string())
}

#[tokio::test]
async fn content_parts_and_an_agent_loops_history_are_taken() {
    let s = start(ServerConfig::default()).await;
    let messages = json!([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture, and the weather?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        ]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_9", "content": [{"type": "text", "text": "-3C, snow"}]}
    ]);
    // Proposers run after a tool result only when asked (see the tool tests below).
    let response = s
        .post(&json!({"model": "mini", "messages": messages,
                      "moa": {"proposers_after_tool_result": true}}))
        .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    let p1 = s.fake.requests_for("p1").remove(0);
    assert_eq!(
        p1.json["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": "[tool call call_9: weather({\"city\":\"Oslo\"})]"},
            {"role": "user", "content": "[tool result call_9: weather]\n-3C, snow"}
        ])
    );
    let agg = s.fake.requests_for("agg").remove(0);
    let (agg, p1) = (
        agg.json["messages"].as_array().unwrap(),
        p1.json["messages"].as_array().unwrap(),
    );
    // The references are appended to the system message; the rest is the same.
    assert!(agg[0]["content"]
        .as_str()
        .unwrap()
        .starts_with("Be brief.\n\nYou have been provided"));
    assert_eq!(agg[1..], p1[1..]);
}

#[tokio::test]
async fn sampling_fields_reach_the_aggregator_alone() {
    let s = start(ServerConfig::default()).await;
    let body = request(json!({
        "temperature": 0.3, "max_completion_tokens": 77, "top_p": 0.9, "stop": ["\n\n"],
        "seed": 42, "frequency_penalty": 0.5, "presence_penalty": 0.1,
        "logit_bias": {"50256": -100}, "user": "u-1", "metadata": {"app": "x"}, "store": false,
        "n": 1, "tools": [], "tool_choice": "none", "response_format": {"type": "text"},
        "logprobs": false, "parallel_tool_calls": true
    }));
    let response = s.post(&body).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let agg = s.fake.requests_for("agg").remove(0).json;
    assert_eq!(agg["temperature"], 0.3);
    assert_eq!(agg["max_tokens"], 77);
    assert_eq!(agg["top_p"], 0.9);
    assert_eq!(agg["stop"], json!(["\n\n"]));
    assert_eq!(agg["seed"], 42);
    assert_eq!(agg["frequency_penalty"], 0.5);
    assert_eq!(agg["presence_penalty"], 0.1);
    assert_eq!(agg["logit_bias"], json!({"50256": -100}));
    for ignored in [
        "logprobs",
        "user",
        "metadata",
        "store",
        "n",
        "tools",
        "tool_choice",
        "response_format",
    ] {
        assert!(agg.get(ignored).is_none(), "{ignored} was sent upstream");
    }
    for proposer in ["p1", "p2"] {
        let p = s.fake.requests_for(proposer).remove(0).json;
        for field in [
            "temperature",
            "max_tokens",
            "top_p",
            "stop",
            "seed",
            "logit_bias",
        ] {
            assert!(p.get(field).is_none(), "{field} reached {proposer}");
        }
    }
}

#[tokio::test]
async fn the_aggregators_log_probabilities_come_back_whole_and_streamed() {
    let s = start(ServerConfig::default()).await;
    let asked = json!({"logprobs": true, "top_logprobs": 2});
    let whole: Value = s.post(&request(asked.clone())).await.json().await.unwrap();
    let content = whole["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    let tokens: String = content
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, "The final answer.");
    // The fake's second token ("fina", log probability -0.5), in OpenAI's shape with bytes.
    let fina = json!({"token": "fina", "logprob": -0.5, "bytes": [102, 105, 110, 97]});
    let mut second = fina.clone();
    second["top_logprobs"] = json!([fina]);
    assert_eq!(content[1], second);
    let agg = s.fake.requests_for("agg").remove(0).json;
    assert_eq!(
        (&agg["logprobs"], &agg["top_logprobs"]),
        (&json!(true), &json!(2))
    );
    let p1 = s.fake.requests_for("p1").remove(0).json;
    assert!(p1.get("logprobs").is_none(), "proposers are not asked");

    let mut streamed = request(asked);
    streamed["stream"] = json!(true);
    let text = s.post(&streamed).await.text().await.unwrap();
    let mut tokens = String::new();
    let mut answer = String::new();
    for event in super::events(&text).iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(event).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            answer.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            for token in choice["logprobs"]["content"]
                .as_array()
                .into_iter()
                .flatten()
            {
                tokens.push_str(token["token"].as_str().unwrap());
            }
        }
    }
    assert_eq!(
        (answer.as_str(), tokens.as_str()),
        ("The final answer.", "The final answer.")
    );

    let plain: Value = s.post(&request(json!({}))).await.json().await.unwrap();
    assert_eq!(plain["choices"][0]["logprobs"], Value::Null);
}

#[tokio::test]
async fn what_moa_cannot_honour_is_refused_by_name() {
    let s = start(ServerConfig::default()).await;
    let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    for (extra, field) in [
        (json!({"n": 9}), "`n` must be 1 to 8"),
        (json!({"tools": [{"type": "code_interpreter"}]}), "`tools`"),
        (json!({"tool_choice": "required"}), "`tool_choice`"),
        (json!({"functions": tool}), "`functions`"),
        (
            json!({"response_format": {"type": "yaml"}}),
            "`response_format`",
        ),
        (json!({"audio": {"voice": "alloy"}}), "`audio`"),
        (json!({"modalities": ["text", "audio"]}), "`modalities`"),
        (json!({"temperatur": 0.5}), "unknown field `temperatur`"),
        (json!({"max_tokens": 0}), "`max_tokens` must be a positive"),
        (json!({"moa": {"include_proposal": true}}), "`moa`"),
    ] {
        let (status, message) = status_and_message(&s, &request(extra.clone())).await;
        assert_eq!(status, 400, "{extra}: {message}");
        assert!(message.contains(field), "{extra}: {message}");
    }
    let bad_part = json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]});
    let (status, message) = status_and_message(&s, &request(bad_part)).await;
    assert_eq!(status, 400);
    assert!(message.contains("`input_audio`"), "{message}");
    assert_eq!(
        s.fake.requests().len(),
        0,
        "nothing refused reached an upstream"
    );
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    }}])
}

/// The fake's aggregator calls the tool when offered tools and the last message is the
/// user's; after the tool's result it answers in text.
fn tool_loop(s: &Setup) {
    s.fake.respond_with(|r| {
        let last_role = r.json["messages"].as_array().unwrap().last().unwrap()["role"].clone();
        match (
            r.model.as_str(),
            r.json.get("tools").is_some(),
            last_role.as_str(),
        ) {
            ("agg", true, Some("user")) => {
                Reply::tool_calls(&[("call_7", "get_weather", r#"{"city":"Oslo"}"#)])
                    .with_chunk_chars(5)
            }
            ("agg", _, _) => Reply::text("It is -3C and snowing in Oslo."),
            (model, _, _) => Reply::text(format!("{model}: call get_weather for Oslo")),
        }
    });
}

#[tokio::test]
async fn the_aggregator_calls_tools_and_proposers_read_them_as_text() {
    let s = start(ServerConfig::default()).await;
    tool_loop(&s);
    let body = request(json!({
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": weather_tool(), "tool_choice": "auto", "parallel_tool_calls": false
    }));
    let json: Value = s.post(&body).await.json().await.unwrap();
    let choice = &json["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{json}");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([{"id": "call_7", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}])
    );
    let agg = s.fake.requests_for("agg").remove(0).json;
    assert_eq!(agg["tools"], weather_tool());
    assert_eq!(agg["tool_choice"], "auto");
    assert_eq!(agg["parallel_tool_calls"], false);
    let p1 = s.fake.requests_for("p1").remove(0).json;
    assert!(p1.get("tools").is_none());
    let system = p1["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.starts_with(
            "The assistant that answers this conversation can call these tools:\n\
             - get_weather: The weather in a city now.\n  arguments (JSON Schema): {"
        ),
        "{system}"
    );
    assert!(system.ends_with("if the conversation already holds what is needed, answer the user."));

    // Streamed: the call arrives in pieces that add up, then finish_reason tool_calls.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = s.post(&streamed).await.text().await.unwrap();
    let chunks: Vec<Value> = super::events(&text)
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let pieces: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert!(pieces.len() > 2, "{text}");
    assert_eq!(pieces[0]["id"], "call_7");
    assert_eq!(pieces[0]["function"]["name"], "get_weather");
    let arguments: String = pieces
        .iter()
        .map(|p| p["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(arguments, r#"{"city":"Oslo"}"#);
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
}

#[tokio::test]
async fn after_a_tool_result_the_aggregator_answers_alone_unless_asked() {
    let s = start(ServerConfig::default()).await;
    tool_loop(&s);
    let history = json!([
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_7", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_7", "content": "-3C, snow"}
    ]);
    let body = request(json!({"messages": history, "tools": weather_tool()}));
    let json: Value = s.post(&body).await.json().await.unwrap();
    assert_eq!(
        json["choices"][0]["message"]["content"],
        "It is -3C and snowing in Oslo."
    );
    assert_eq!(json["choices"][0]["finish_reason"], "stop");
    let requests = s.fake.requests();
    assert_eq!(requests.len(), 1, "proposers were skipped");
    // The aggregator sees the loop as it is, with the tools.
    assert_eq!(requests[0].json["messages"], history);
    assert_eq!(requests[0].json["tools"], weather_tool());

    let mut asked = body.clone();
    asked["moa"] = json!({"proposers_after_tool_result": true});
    let response = s.post(&asked).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        s.fake.requests().len(),
        4,
        "two proposers and the aggregator"
    );

    let bad = request(json!({"tools": weather_tool(),
        "tool_choice": {"type": "function", "function": {"name": "get_time"}}}));
    let (status, message) = status_and_message(&s, &bad).await;
    assert_eq!(status, 400);
    assert!(message.contains("`get_time`"), "{message}");
}

#[tokio::test]
async fn n_choices_share_one_set_of_proposals() {
    let s = start(ServerConfig::default()).await;
    s.fake.respond_with(|r| {
        let seed = r.json.get("seed").cloned().unwrap_or_default();
        Reply::text(format!("{} with seed {seed}", r.model)).with_usage(10, 3)
    });
    let body = request(json!({"n": 2, "seed": 42}));
    let json: Value = s.post(&body).await.json().await.unwrap();
    let choices = json["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[0]["message"]["content"], "agg with seed 42");
    assert_eq!(choices[1]["index"], 1);
    assert_eq!(choices[1]["message"]["content"], "agg with seed 43");
    // Two proposers, then two aggregations of their answers: P + n calls.
    let models: Vec<String> = s.fake.requests().iter().map(|r| r.model.clone()).collect();
    assert_eq!(models.iter().filter(|m| *m == "agg").count(), 2);
    assert_eq!(models.len(), 4);
    assert_eq!(json["usage"]["total_tokens"], 4 * 13);

    // Streamed: each choice opens, fills and closes under its own index.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = s.post(&streamed).await.text().await.unwrap();
    let mut answers = [String::new(), String::new()];
    let mut finished = [false, false];
    for event in super::events(&text).iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(event).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            let index = choice["index"].as_u64().unwrap() as usize;
            if let Some(piece) = choice["delta"]["content"].as_str() {
                answers[index].push_str(piece);
            }
            finished[index] |= choice["finish_reason"] == "stop";
        }
    }
    assert_eq!(answers, ["agg with seed 42", "agg with seed 43"]);
    assert_eq!(finished, [true, true]);
}

/// The fake's aggregator answers with prose around JSON first, and with `repaired` when asked
/// to repair; proposers answer in text.
fn format_fake(s: &Setup, repaired: &'static str) {
    s.fake.respond_with(move |r| {
        let messages = r.json["messages"].as_array().unwrap();
        let last = messages.last().unwrap()["content"]
            .as_str()
            .unwrap_or_default();
        match r.model.as_str() {
            "agg" if last.starts_with("Your answer cannot be used") => Reply::text(repaired),
            "agg" => Reply::text("Here you go: {\"name\": \"Ada\"}"),
            model => Reply::text(format!("{model}: name Ada, age 36")),
        }
    });
}

fn person_format(strict: bool) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "person", "strict": strict, "schema": {
        "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"], "additionalProperties": false}}})
}

#[tokio::test]
async fn json_answers_are_checked_and_repaired_once() {
    let s = start(ServerConfig::default()).await;
    format_fake(&s, r#"{"name": "Ada", "age": 36}"#);
    let body = request(json!({"response_format": person_format(true)}));
    let json: Value = s.post(&body).await.json().await.unwrap();
    assert_eq!(
        json["choices"][0]["message"]["content"], r#"{"name": "Ada", "age": 36}"#,
        "{json}"
    );
    let aggs = s.fake.requests_for("agg");
    assert_eq!(aggs.len(), 2, "the answer and one repair");
    assert_eq!(aggs[0].json["response_format"], person_format(true));
    let repair = aggs[1].json["messages"].as_array().unwrap();
    assert_eq!(
        repair[repair.len() - 2]["content"],
        "Here you go: {\"name\": \"Ada\"}"
    );
    let prompt = repair.last().unwrap()["content"].as_str().unwrap();
    assert!(
        prompt.starts_with("Your answer cannot be used: the answer is not valid JSON"),
        "{prompt}"
    );
    // Proposers are told the format in text, first in their system message.
    let p1 = &s.fake.requests_for("p1")[0].json;
    assert!(p1["messages"][0]["content"]
        .as_str()
        .unwrap()
        .starts_with("The answer to this conversation must be a single JSON value that validates against the JSON Schema `person`"));
    assert!(p1.get("response_format").is_none());

    // Streamed, the checked answer arrives in one piece.
    let mut streamed = request(json!({"response_format": {"type": "json_object"}, "stream": true}));
    streamed["stream"] = json!(true);
    let text = s.post(&streamed).await.text().await.unwrap();
    let content = super::streamed_content(&text);
    assert_eq!(content, r#"{"name": "Ada", "age": 36}"#);
}

#[tokio::test]
async fn a_checked_streamed_answer_that_calls_a_tool_sends_the_call() {
    let s = start(ServerConfig::default()).await;
    s.fake.respond_with(|r| match r.model.as_str() {
        "agg" => Reply::tool_calls(&[("call_3", "get_weather", r#"{"city":"Oslo"}"#)]),
        model => Reply::text(format!("{model} thinks so")),
    });
    let body = request(
        json!({"response_format": {"type": "json_object"}, "stream": true,
                              "tools": weather_tool()}),
    );
    let text = s.post(&body).await.text().await.unwrap();
    let mut arguments = String::new();
    let mut finish = None;
    for event in super::events(&text).iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(event).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            for call in choice["delta"]["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
            {
                assert_eq!(call["index"], 0);
                arguments.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
            }
            finish = choice["finish_reason"]
                .as_str()
                .map(str::to_string)
                .or(finish);
        }
    }
    assert_eq!(arguments, r#"{"city":"Oslo"}"#, "{text}");
    assert_eq!(finish.as_deref(), Some("tool_calls"));
}

#[tokio::test]
async fn an_answer_still_wrong_after_the_repair_is_an_error_when_strict() {
    let s = start(ServerConfig::default()).await;
    format_fake(&s, r#"{"name": "Ada"}"#);
    let strict = s
        .post(&request(json!({"response_format": person_format(true)})))
        .await;
    assert_eq!(strict.status(), 502);
    let json: Value = strict.json().await.unwrap();
    assert_eq!(json["error"]["code"], "invalid_output");
    assert!(json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("after one repair"));

    let lenient: Value = s
        .post(&request(json!({"response_format": person_format(false)})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        lenient["choices"][0]["message"]["content"],
        r#"{"name": "Ada"}"#
    );
    let warning = lenient["moa"]["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("does not validate against the schema"),
        "{warning}"
    );

    let bad = request(json!({"response_format": {"type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": 12}}}}));
    let (status, message) = status_and_message(&s, &bad).await;
    assert_eq!(status, 400);
    assert!(
        message.contains("`response_format.json_schema.schema`"),
        "{message}"
    );
}

#[tokio::test]
async fn a_model_describes_its_layers() {
    let s = start(ServerConfig::default()).await;
    let get = |path: &str| s.http.get(format!("{}{path}", s.base)).send();
    let one: Value = get("/v1/models/mini").await.unwrap().json().await.unwrap();
    assert_eq!(
        one,
        json!({"id": "mini", "object": "model", "created": 0, "owned_by": "moa",
               "moa": {"layers": [["up:p1", "up:p2"]], "aggregator": "up:agg", "prompt_style": "reference"}})
    );
    let list: Value = get("/v1/models").await.unwrap().json().await.unwrap();
    assert_eq!(list["data"][0], one);
    let missing = get("/v1/models/gpt-9").await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"]["code"],
        "model_not_found"
    );
}

#[tokio::test]
async fn proposals_stream_live_as_extra_chunks_when_asked() {
    let s = start(ServerConfig::default()).await;
    s.fake.push(
        "p2",
        Reply::error(500, "server_error", "secret upstream detail"),
    );
    let body = request(
        json!({"stream": true, "moa": {"stream_proposals": true, "min_proposals_unused": null}}),
    );
    // Unknown extension fields are refused like any other.
    assert_eq!(s.post(&body).await.status(), 400);

    let body = request(json!({"stream": true, "moa": {"stream_proposals": true}}));
    let text = s.post(&body).await.text().await.unwrap();
    assert!(!text.contains("secret upstream detail"), "{text}");
    let progress: Vec<Value> = super::events(&text)
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter(|c| c["choices"] == json!([]) && c.get("moa").is_some())
        .map(|c| c["moa"].clone())
        .collect();
    let kinds: Vec<&str> = progress
        .iter()
        .map(|p| p["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "layer_started");
    assert!(kinds.contains(&"proposer_delta"), "{kinds:?}");
    let done = progress
        .iter()
        .find(|p| p["event"] == "proposer_done")
        .unwrap();
    assert_eq!(done["answer"], "p1 thinks so");
    let failed = progress
        .iter()
        .find(|p| p["event"] == "proposer_failed")
        .unwrap();
    assert_eq!(failed["model"], "up:p2");
    assert!(failed.get("error").is_none());
    assert_eq!(*kinds.last().unwrap(), "aggregator_started");
    // The answer still streams as usual.
    assert!(text.contains("\"content\":\"The "));

    // The whole response's proposals say how a proposer failed, not what its upstream wrote.
    s.fake.push(
        "p2",
        Reply::error(500, "server_error", "secret upstream detail"),
    );
    let whole = s
        .post(&request(json!({"moa": {"include_proposals": true}})))
        .await
        .text()
        .await
        .unwrap();
    assert!(!whole.contains("secret upstream detail"), "{whole}");
    assert!(whole.contains("HTTP 500"), "{whole}");
}

#[tokio::test]
async fn a_request_may_change_the_preset_for_itself() {
    let s = start(ServerConfig::default()).await;
    let body = request(json!({"moa": {
        "proposers": ["up:p3", "up:p4", "up:p5"], "layers": 3, "proposer_max_tokens": 20,
        "proposer_temperature": 0.1, "prompt_style": "tagged", "min_proposals": 3
    }}));
    let json: Value = s.post(&body).await.json().await.unwrap();
    assert_eq!(
        json["choices"][0]["message"]["content"], "The final answer.",
        "{json}"
    );
    assert_eq!(
        json["moa"]["plan"],
        json!({"layers": [["up:p3", "up:p4", "up:p5"], ["up:p3", "up:p4", "up:p5"]],
               "aggregator": "up:agg", "prompt_style": "tagged"})
    );
    let models: Vec<String> = s.fake.requests().iter().map(|r| r.model.clone()).collect();
    assert_eq!(
        models.iter().filter(|m| *m == "p3").count(),
        2,
        "two proposer layers"
    );
    assert!(!models.contains(&"p1".to_string()));
    let p3 = &s.fake.requests_for("p3")[0].json;
    assert_eq!(p3["max_tokens"], 20);
    assert_eq!(p3["temperature"], 0.1);
    let agg = &s.fake.requests_for("agg")[0].json;
    assert!(agg["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("<response id=\"1\" model=\"up:p3\">"));

    for (moa, expected) in [
        (
            json!({"proposers": ["openai:gpt-4o"]}),
            "provider `openai` is not available here",
        ),
        (
            json!({"aggregator": "nocolon"}),
            "`nocolon` is not a model reference",
        ),
        (json!({"layers": 0}), "the layer count must be at least 1"),
        (
            json!({"prompt_style": "fancy"}),
            "`moa.prompt_style` `fancy` is not one of",
        ),
        (json!({"timeout": -1}), "`moa.timeout`"),
    ] {
        let (status, message) = status_and_message(&s, &request(json!({"moa": moa}))).await;
        assert_eq!(status, 400, "{message}");
        assert!(message.contains(expected), "{message}");
    }
}

#[tokio::test]
async fn a_request_may_set_the_run_policy() {
    let s = start(ServerConfig::default()).await;
    // p2 would take a minute; with a quorum of 1 the run goes on without it.
    s.fake.respond_with(|r| match r.model.as_str() {
        "agg" => Reply::text("The final answer."),
        "p2" => Reply::text("late").with_delay(std::time::Duration::from_secs(60)),
        model => Reply::text(format!("{model} thinks so")),
    });
    let body = request(json!({"moa": {"quorum": 1, "grace_ms": 0}}));
    let json: Value = s.post(&body).await.json().await.unwrap();
    assert_eq!(
        json["choices"][0]["message"]["content"],
        "The final answer."
    );
    assert_eq!(
        json["moa"]["degraded"],
        json!([{"layer": 1, "model": "up:p2", "kind": "cancelled"}])
    );
    assert_eq!(json["moa"]["plan"]["quorum"], 1);
    let p2 = s.fake.requests_for("p2").remove(0).seq;
    assert_eq!(
        s.fake.wait_ending(p2).await,
        moa_testkit::Ending::ClientGone
    );

    // Early exit: both proposers agree, the aggregator is not called.
    s.fake.respond_with(|r| match r.model.as_str() {
        "agg" => Reply::text("never"),
        _ => Reply::text("42"),
    });
    let body = request(json!({"moa": {"early_exit": true}, "stream": true}));
    let text = s.post(&body).await.text().await.unwrap();
    let content = super::streamed_content(&text);
    assert_eq!(content, "42");
    assert!(text.contains(r#""early_exit":{"layer":1}"#), "{text}");
    assert_eq!(
        s.fake.requests_for("agg").len(),
        1,
        "only the first request's"
    );

    // Fallback: the aggregator fails, the first proposal answers; the client learns which
    // model answered, not what the upstream said.
    s.fake.respond_with(|r| match r.model.as_str() {
        "agg" => Reply::status(
            500,
            r#"{"error":{"message":"internal detail http://10.0.0.5"}}"#,
        ),
        model => Reply::text(format!("{model} thinks so")),
    });
    let body = request(json!({"moa": {"fallback": true}}));
    let response = s.post(&body).await;
    assert_eq!(response.status(), 200);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["choices"][0]["message"]["content"], "p1 thinks so");
    assert_eq!(
        json["moa"]["degraded"],
        json!([{"layer": null, "model": "up:agg", "kind": "fallback"}])
    );
    assert!(!json.to_string().contains("10.0.0.5"));

    let (status, message) = status_and_message(&s, &request(json!({"moa": {"quorum": 0}}))).await;
    assert_eq!(status, 400);
    assert!(
        message.contains("`moa.quorum` must be at least 1"),
        "{message}"
    );

    // A budget the run cannot fit is the client's to raise: 400, before any upstream call.
    let before = s.fake.requests().len();
    let response = s
        .post(&request(json!({"moa": {"max_tokens_total": 10}})))
        .await;
    assert_eq!(response.status(), 400);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["code"], "budget_too_small");
    assert_eq!(s.fake.requests().len(), before);
}

#[tokio::test]
async fn an_operator_can_fix_the_presets() {
    let s = start(ServerConfig {
        fixed_presets: true,
        ..ServerConfig::default()
    })
    .await;
    for moa in [
        json!({"proposers": ["up:p3"]}),
        json!({"aggregator": "up:p3"}),
        json!({"layers": 3}),
    ] {
        let (status, message) = status_and_message(&s, &request(json!({"moa": moa}))).await;
        assert_eq!(status, 403, "{message}");
        assert!(message.contains("--fixed-presets"), "{message}");
    }
    assert!(s.fake.requests().is_empty(), "nothing ran");
    // What does not change the preset still works.
    let body = request(json!({"moa": {"include_proposals": true, "min_proposals": 1}}));
    assert_eq!(s.post(&body).await.status(), 200);
}

/// async-openai's types, as a second independent client: tool calls (whole and streamed) and
/// several choices read as OpenAI's own shapes.
#[tokio::test]
async fn tool_calls_and_choices_deserialize_with_async_openais_types() {
    use async_openai::types::chat::{
        CreateChatCompletionResponse, CreateChatCompletionStreamResponse,
    };
    let s = start(ServerConfig::default()).await;
    tool_loop(&s);
    let body = request(json!({
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": weather_tool(), "n": 2
    }));
    let text = s.post(&body).await.text().await.unwrap();
    let whole: CreateChatCompletionResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(whole.choices.len(), 2);
    let calls = whole.choices[1].message.tool_calls.as_ref().unwrap();
    assert_eq!(calls.len(), 1, "{text}");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = s.post(&streamed).await.text().await.unwrap();
    let events = super::events(&text);
    let chunks: Vec<CreateChatCompletionStreamResponse> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect();
    let pieces = chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter(|c| c.index == 1)
        .filter_map(|c| c.delta.tool_calls.as_ref())
        .count();
    assert!(pieces > 1, "{text}");
}

/// The same two-step tool loop through the server with an Anthropic or a Bedrock aggregator:
/// the client speaks OpenAI, the aggregator its own dialect's blocks. Returns what the
/// aggregator's fake received, in order.
async fn tool_loop_through(dialect: moa_providers::Dialect) -> Vec<Value> {
    use moa_providers::{Dialect, Endpoint, Registry, RetryPolicy};
    let proposers = moa_testkit::FakeOpenAi::start().await;
    proposers.respond_with(|r| Reply::text(format!("{}: call get_weather", r.model)));
    let upstream = match dialect {
        Dialect::Bedrock => moa_testkit::FakeServer::bedrock().await,
        _ => moa_testkit::FakeServer::anthropic().await,
    };
    upstream.respond_with(|r| {
        let last = r.json["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        // The tool's result: Anthropic's `tool_result` block or Bedrock's `toolResult`.
        let block = &last["content"][0];
        match block["type"] == "tool_result" || block.get("toolResult").is_some() {
            true => Reply::text("It is -3C in Oslo."),
            false => Reply::tool_calls(&[("toolu_1", "get_weather", r#"{"city":"Oslo"}"#)]),
        }
    });
    let mut registry = Registry::new(std::sync::Arc::new(|var: &str| {
        (var == "FAKE_KEY").then(|| "sk-fake".to_string())
    }));
    let mut up = Endpoint::custom("up", &proposers.base_url());
    up.retry = RetryPolicy::none();
    registry.insert_endpoint(up);
    let mut vendor = Endpoint::custom("vendor", &upstream.base_url());
    vendor.dialect = dialect;
    vendor.region = Some("us-east-1".into());
    vendor.api_key_env = Some("FAKE_KEY".into());
    vendor.retry = RetryPolicy::none();
    registry.insert_endpoint(vendor);
    let preset = moa_core::Preset {
        name: "mixed".into(),
        description: String::new(),
        layers: vec![vec![
            moa_core::AgentSpec::new("up:p1"),
            moa_core::AgentSpec::new("up:p2"),
        ]],
        aggregator: moa_core::AgentSpec::new("vendor:claude-3-haiku"),
        prompt_style: moa_core::PromptStyle::Reference,
        policy: Default::default(),
    };
    let moa = moa_core::Moa::new(
        registry.bind(&preset).unwrap(),
        moa_core::RunOptions::default(),
    );
    let app = moa_server::router(
        moa_server::FixedEngines(std::collections::BTreeMap::from([(
            "mixed".to_string(),
            moa,
        )])),
        ServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    tokio::spawn(moa_server::serve(
        listener,
        app,
        std::future::pending(),
        std::time::Duration::from_secs(1),
    ));
    let http = reqwest::Client::new();
    let post = |body: Value| {
        let request = http.post(&url).json(&body);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };

    let mut messages = json!([{"role": "user", "content": "Weather in Oslo?"}]);
    let first = post(
        json!({"model": "mixed", "messages": messages, "tools": weather_tool(), "stream": false}),
    )
    .await;
    let message = &first["choices"][0]["message"];
    assert_eq!(
        first["choices"][0]["finish_reason"], "tool_calls",
        "{first}"
    );
    assert_eq!(
        message["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Oslo"}"#
    );
    messages.as_array_mut().unwrap().push(message.clone());
    messages
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "tool", "tool_call_id": "toolu_1", "content": "-3C, snow"}));
    let second =
        post(json!({"model": "mixed", "messages": messages, "tools": weather_tool()})).await;
    assert_eq!(
        second["choices"][0]["message"]["content"], "It is -3C in Oslo.",
        "{second}"
    );
    // The server's request id reached the vendor with every call (Bedrock: unsigned).
    for call in upstream.requests() {
        let id = call.header("x-request-id").unwrap_or_default();
        assert!(moa_core::tracecontext::is_uuid(id), "{id:?}");
    }
    upstream.requests().into_iter().map(|r| r.json).collect()
}

#[tokio::test]
async fn a_tool_loop_through_an_anthropic_aggregator() {
    let sent = tool_loop_through(moa_providers::Dialect::Anthropic).await;
    assert_eq!(sent[0]["tools"][0]["name"], "get_weather");
    assert!(sent[0]["system"]
        .as_str()
        .unwrap()
        .contains("1. p1: call get_weather"));
    assert_eq!(
        sent[1]["messages"][1]["content"][0],
        json!({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}})
    );
    assert_eq!(
        sent[1]["messages"][2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": "-3C, snow"})
    );
}

#[tokio::test]
async fn a_tool_loop_through_a_bedrock_aggregator() {
    let sent = tool_loop_through(moa_providers::Dialect::Bedrock).await;
    let spec = &sent[0]["toolConfig"]["tools"][0]["toolSpec"];
    assert_eq!(spec["name"], "get_weather");
    assert_eq!(spec["inputSchema"]["json"]["required"], json!(["city"]));
    assert!(sent[0]["system"][0]["text"]
        .as_str()
        .unwrap()
        .contains("1. p1: call get_weather"));
    assert_eq!(
        sent[1]["messages"][1]["content"][0],
        json!({"toolUse": {"toolUseId": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}})
    );
    assert_eq!(
        sent[1]["messages"][2]["content"][0],
        json!({"toolResult": {"toolUseId": "toolu_1", "content": [{"text": "-3C, snow"}]}})
    );
}
