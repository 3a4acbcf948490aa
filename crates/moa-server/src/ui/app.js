// The moa playground: a chat page over the server's own API. It sends what any client can send
// (`stream: true` with `moa.stream_proposals`) and draws what comes back, so what it shows is
// what the API gives. No framework, no build step; text from the server is only ever set as
// text, never parsed as HTML. The API key, when the server asks for one, lives in `state.key`:
// never in storage, cookies or the address bar.
'use strict';

const state = {
  key: null,
  models: [],
  messages: [],
  controller: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  if (state.key) headers.set('Authorization', 'Bearer ' + state.key);
  return fetch(path, { ...init, headers, credentials: 'omit', cache: 'no-store' });
}

// An OpenAI error body's message, or the status line.
async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

async function loadModels() {
  let response;
  try {
    response = await api('/v1/models');
  } catch (e) {
    showError('cannot reach the server: ' + e.message);
    return;
  }
  if (response.status === 401) {
    $('keyform').hidden = false;
    if (state.key) showError('that key was refused; try again');
    state.key = null;
    $('key').focus();
    return;
  }
  if (!response.ok) {
    showError(await errorText(response));
    return;
  }
  $('keyform').hidden = true;
  showError('');
  state.models = (await response.json()).data || [];
  const select = $('preset');
  select.replaceChildren(...state.models.map((m) => el('option', '', m.id)));
  describePlan();
  document.body.dataset.ready = 'true';
}

function currentModel() {
  return state.models.find((m) => m.id === $('preset').value);
}

function describePlan() {
  const model = currentModel();
  const moa = model && model.moa;
  if (!moa) {
    $('plan').textContent = '';
    return;
  }
  const layers = (moa.layers || []).map((layer, i) => `layer ${i + 1}: ${layer.join(', ')}`);
  $('plan').textContent = `${layers.join(' · ')} → ${moa.aggregator}`;
}

// The request's `moa` object: live progress, the proposals at the end, and the edits made.
function extension() {
  const moa = { stream_proposals: true, include_proposals: true };
  const proposers = $('proposers').value.split('\n').map((s) => s.trim()).filter(Boolean);
  if (proposers.length) moa.proposers = proposers;
  const aggregator = $('aggregator').value.trim();
  if (aggregator) moa.aggregator = aggregator;
  const layers = parseInt($('layers').value, 10);
  if (layers > 0) moa.layers = layers;
  return moa;
}

function formatStats(parts) {
  return parts.filter(Boolean).join(' · ');
}

function usageText(usage) {
  if (!usage) return '';
  return `${usage.prompt_tokens} in / ${usage.completion_tokens} out tokens`;
}

function costText(cost) {
  if (cost === undefined || cost === null) return '';
  return '$' + (cost < 0.01 ? cost.toPrecision(2) : cost.toFixed(4));
}

// One run on the page: a row of panes per proposer layer, then the answer.
class RunView {
  constructor(log) {
    this.root = el('section', 'run');
    this.layers = el('div', 'layers');
    this.aggregate = el('div', 'aggregate');
    this.aggregateTitle = el('h3', '', 'Aggregator');
    this.answer = el('div', 'answer');
    this.stats = el('div', 'stats');
    this.actions = el('div', 'actions');
    this.aggregate.append(this.aggregateTitle, this.answer, this.stats);
    this.root.append(this.layers, this.aggregate, this.actions);
    log.append(this.root);
    this.panes = new Map();
    this.text = '';
    this.trace = null;
    this.usage = null;
  }

  layer(number, count) {
    const section = el('div', 'layer');
    section.dataset.layer = number;
    const title = el('h3', '', `Layer ${number} · ${count} proposers`);
    const panes = el('div', 'panes');
    section.append(title, panes);
    this.layers.append(section);
    for (let i = 0; i < count; i++) this.pane(number, i, panes);
  }

  pane(layer, index, parent) {
    const key = `${layer}/${index}`;
    let pane = this.panes.get(key);
    if (pane) return pane;
    const root = el('div', 'pane waiting');
    root.dataset.layer = layer;
    root.dataset.index = index;
    const head = el('div');
    const model = el('span', 'model', `proposer ${index + 1}`);
    const status = el('span', 'state', ' waiting');
    head.append(model, status);
    const text = el('div', 'text');
    const stats = el('div', 'stats');
    root.append(head, text, stats);
    const host = parent || this.layers.querySelector(`.layer[data-layer="${layer}"] .panes`);
    (host || this.layers).append(root);
    pane = { root, model, status, text, stats, usage: null, latency: null };
    this.panes.set(key, pane);
    return pane;
  }

  setState(pane, name) {
    pane.root.className = 'pane ' + name;
    pane.status.textContent = ' ' + name;
  }

  // One `moa` progress event (see the server's `progress` frames).
  event(e) {
    switch (e.event) {
      case 'layer_started':
        this.layer(e.layer, e.proposers);
        break;
      case 'proposer_started': {
        const pane = this.pane(e.layer, e.index);
        pane.model.textContent = e.model;
        this.setState(pane, 'running');
        break;
      }
      case 'proposer_delta':
        this.pane(e.layer, e.index).text.textContent += e.text;
        break;
      case 'proposer_done': {
        const pane = this.pane(e.layer, e.index);
        pane.model.textContent = e.model;
        pane.text.textContent = e.answer;
        pane.usage = e.usage;
        pane.latency = e.latency_ms;
        pane.stats.textContent = formatStats([`${e.latency_ms} ms`, usageText(e.usage)]);
        this.setState(pane, 'done');
        break;
      }
      case 'proposer_failed': {
        const pane = this.pane(e.layer, e.index);
        pane.model.textContent = e.model;
        pane.stats.textContent = `failed after ${e.latency_ms} ms; left out of the references`;
        this.setState(pane, 'failed');
        break;
      }
      case 'proposer_cancelled': {
        const pane = this.pane(e.layer, e.index);
        pane.stats.textContent = `cancelled after ${e.latency_ms} ms: the layer's quorum was in`;
        this.setState(pane, 'cancelled');
        break;
      }
      case 'layer_done': {
        const title = this.layers.querySelector(`.layer[data-layer="${e.layer}"] h3`);
        if (title) {
          title.textContent = formatStats([
            `Layer ${e.layer}`, `${e.succeeded} answered`,
            e.failed ? `${e.failed} failed` : '', e.cancelled ? `${e.cancelled} cancelled` : '',
            `${e.elapsed_ms} ms`,
          ]);
        }
        break;
      }
      case 'aggregator_started':
        this.aggregateTitle.textContent = `Aggregator · ${e.model}`;
        break;
      case 'early_exit':
        this.aggregateTitle.textContent = `Layer ${e.layer}'s answers agreed: no aggregator needed`;
        break;
      case 'fallback':
        this.aggregateTitle.textContent = `The aggregator failed; ${e.model}'s answer stands in`;
        break;
      default:
        break;
    }
  }

  // The run's closing `moa` block: every call with its tokens and cost.
  finish(block) {
    this.trace = block;
    for (const layer of block.layers || []) {
      (layer.calls || []).forEach((call, index) => {
        const pane = this.pane(layer.layer, index);
        pane.model.textContent = call.model;
        if (call.status !== 'ok') this.setState(pane, call.status);
        if (call.status === 'ok' && !pane.text.textContent) pane.text.textContent = call.answer || '';
        pane.stats.textContent = formatStats([
          `${call.latency_ms} ms`, usageText(call.usage), costText(call.cost),
          call.error ? call.error : '',
        ]);
      });
    }
    const agg = block.aggregator;
    this.stats.textContent = formatStats([
      agg && agg.first_token_ms !== undefined ? `first token ${agg.first_token_ms} ms` : '',
      agg ? `${agg.latency_ms} ms` : '', agg ? usageText(agg.usage) : '',
      block.cost !== undefined && block.cost !== null ? `run ${costText(block.cost)}` : '',
      (block.degraded || []).length ? `degraded: ${block.degraded.map((d) => `${d.model} ${d.kind}`).join(', ')}` : '',
    ]);
  }

  fail(message) {
    this.root.classList.add('failed');
    const note = el('div', 'stats', message);
    note.setAttribute('role', 'alert');
    this.aggregate.append(note);
  }

  addCopy(request) {
    const button = el('button', 'copy', 'Copy trace');
    button.type = 'button';
    button.addEventListener('click', () => copyTrace(button, this, request));
    this.actions.append(button);
    this.root.dataset.done = 'true';
  }
}

// The trace as JSON: the request (never the key), the answer, and the run's `moa` block.
function traceJson(view, request) {
  return JSON.stringify({ request, answer: view.text, usage: view.usage, moa: view.trace }, null, 2);
}

async function copyTrace(button, view, request) {
  const json = traceJson(view, request);
  try {
    await navigator.clipboard.writeText(json);
    button.textContent = 'Copied';
  } catch (_) {
    // No clipboard (a page served over plain HTTP to another host): show it to copy by hand.
    let pre = view.actions.querySelector('pre.trace');
    if (!pre) {
      pre = el('pre', 'trace');
      view.actions.after(pre);
    }
    pre.textContent = json;
    const range = document.createRange();
    range.selectNodeContents(pre);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    button.textContent = 'Selected: copy with Ctrl+C';
  }
}

// Server-sent events from a fetch body: each `data:` payload, parsed; comments skipped.
async function* events(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame.split('\n').filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart()).join('\n');
      if (!data) continue;
      if (data === '[DONE]') return;
      yield JSON.parse(data);
    }
  }
}

function busy(on) {
  $('send').disabled = on;
  $('stop').disabled = !on;
  $('preset').disabled = on;
}

async function send(prompt) {
  const model = $('preset').value;
  if (!model || !prompt.trim()) return;
  showError('');
  state.messages.push({ role: 'user', content: prompt });
  const log = $('log');
  log.append(el('div', 'user', prompt));
  const view = new RunView(log);
  const request = {
    model,
    messages: state.messages.slice(),
    stream: true,
    stream_options: { include_usage: true },
    moa: extension(),
  };
  state.controller = new AbortController();
  busy(true);
  let ok = false;
  try {
    const response = await api('/v1/chat/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(request),
      signal: state.controller.signal,
    });
    if (!response.ok) {
      view.fail(await errorText(response));
      if (response.status === 401) loadModels();
    } else {
      for await (const chunk of events(response.body)) {
        if (chunk.error) {
          view.fail(chunk.error.message || 'the run failed');
          break;
        }
        if (chunk.moa) {
          if (chunk.moa.event) view.event(chunk.moa);
          else view.finish(chunk.moa);
        }
        if (chunk.usage) view.usage = chunk.usage;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          view.text += delta.content;
          view.answer.textContent = view.text;
        }
        if (chunk.choices && chunk.choices[0] && chunk.choices[0].finish_reason) ok = true;
      }
    }
  } catch (e) {
    view.fail(e.name === 'AbortError' ? 'stopped' : 'the connection failed: ' + e.message);
  } finally {
    state.controller = null;
    busy(false);
  }
  if (ok) {
    state.messages.push({ role: 'assistant', content: view.text });
    view.addCopy(request);
  } else {
    // The question is not lost: it goes back in the box, and out of the conversation.
    state.messages.pop();
    if (!$('prompt').value) $('prompt').value = prompt;
  }
  view.root.scrollIntoView({ block: 'end' });
}

function init() {
  $('keyform').addEventListener('submit', (event) => {
    event.preventDefault();
    state.key = $('key').value;
    $('key').value = '';
    loadModels();
  });
  $('preset').addEventListener('change', describePlan);
  $('ask').addEventListener('submit', (event) => {
    event.preventDefault();
    const prompt = $('prompt').value;
    $('prompt').value = '';
    send(prompt);
  });
  $('prompt').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      $('ask').requestSubmit();
    }
  });
  $('stop').addEventListener('click', () => state.controller && state.controller.abort());
  $('new').addEventListener('click', () => {
    if (state.controller) state.controller.abort();
    state.messages = [];
    $('log').replaceChildren();
    showError('');
  });
  loadModels();
}

init();
