// The search page: one query box, a grid of results (the frames the model saw, the score), a viewer for clips and
// attention maps. Talks to the JSON API of `mcq-ds serve` only; every error the API returns is shown as it says.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;

async function api(url) {
  const response = await fetch(url);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
  return body;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function baseName(path) {
  return path.split(/[\\/]/).pop();
}

function card(hit, query) {
  const item = document.createElement("article");
  item.className = "result" + (hit.missing ? " missing" : "");
  item.dataset.id = hit.id;
  item.dataset.row = hit.row;
  item.style.setProperty("--frames", info ? info.frames : 4);
  const picture = document.createElement("img");
  picture.loading = "lazy";
  picture.alt = `frames of ${baseName(hit.id)}`;
  picture.title = hit.missing ? `${hit.path} is missing` : "play the clip";
  if (!hit.missing) {
    picture.src = hit.thumbnail;
    picture.addEventListener("click", () => play(hit));
  }
  item.append(picture);
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.innerHTML = `<span class="rank">#${hit.rank}</span><span class="score">${hit.score.toFixed(3)}</span>`;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = baseName(hit.id);
  name.title = hit.path;
  meta.append(name);
  item.append(meta);
  if (hit.missing) {
    const problem = document.createElement("div");
    problem.className = "problem";
    problem.textContent = "video file missing (moved or deleted since extraction)";
    item.append(problem);
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  const similar = document.createElement("button");
  similar.type = "button";
  similar.textContent = "similar";
  similar.addEventListener("click", () => run(`/api/similar?row=${hit.row}&k=${$("k").value}`,
                                               `videos like ${baseName(hit.id)}`));
  actions.append(similar);
  if (info && info.attention && query && !hit.missing) {
    const attention = document.createElement("button");
    attention.type = "button";
    attention.textContent = "attention";
    attention.addEventListener("click", () => showAttention(hit, query));
    actions.append(attention);
  }
  item.append(actions);
  return item;
}

async function run(url, label) {
  setStatus(`searching ${label}…`);
  try {
    const answer = await api(url);
    const grid = $("results");
    grid.replaceChildren(...answer.results.map((hit) => card(hit, typeof answer.query === "string" ? answer.query : null)));
    const took = Object.values(answer.seconds).reduce((a, b) => a + b, 0);
    setStatus(`${answer.results.length} results for ${label} (${(1000 * took).toFixed(0)} ms)`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function search(query) {
  const url = new URL(location.href);
  url.searchParams.set("q", query);
  history.replaceState(null, "", url);
  run(`/api/search?q=${encodeURIComponent(query)}&k=${$("k").value}`, `“${query}”`);
}

function openViewer(title, content) {
  $("viewer-title").textContent = title;
  $("viewer-body").replaceChildren(content);
  $("viewer").showModal();
}

function viewerError(message) {
  const text = document.createElement("p");
  text.className = "error";
  text.textContent = message;
  $("viewer-body").replaceChildren(text);
}

function play(hit) {
  const player = document.createElement("video");
  player.controls = true;
  player.autoplay = true;
  player.loop = true;
  player.muted = true;
  player.src = hit.video;
  player.addEventListener("error", async () => {
    try {
      await api(hit.video);  // the API says why (missing file) as JSON
      viewerError(`the browser cannot play ${hit.path} (its codec or container); the file itself is there`);
    } catch (error) {
      viewerError(error.message);
    }
  });
  openViewer(hit.path, player);
}

function showAttention(hit, query) {
  const url = `/api/attention?row=${hit.row}&q=${encodeURIComponent(query)}`;
  const picture = document.createElement("img");
  picture.alt = "BridgeFormer attention";
  picture.addEventListener("error", async () => {
    try { await api(url); } catch (error) { viewerError(error.message); }
  });
  picture.src = url;
  const wait = document.createElement("p");
  wait.textContent = "computing the attention of the query's phrases…";
  picture.addEventListener("load", () => wait.remove());
  const box = document.createElement("div");
  box.append(wait, picture);
  openViewer(`BridgeFormer attention: “${query}” on ${baseName(hit.id)}`, box);
}

async function start() {
  $("viewer-close").addEventListener("click", () => $("viewer").close());
  $("viewer").addEventListener("close", () => $("viewer-body").replaceChildren());
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search($("query").value);
  });
  try {
    info = await api("/api/info");
    $("about").textContent = `${info.videos} videos · ${info.embed_dim}-d · ${info.search} search · model ${info.model.path}`;
    $("warnings").replaceChildren(...info.warnings.map((text) => {
      const line = document.createElement("div");
      line.textContent = text;
      return line;
    }));
  } catch (error) {
    setStatus(error.message, true);
  }
  const query = new URL(location.href).searchParams.get("q");
  if (query) {
    $("query").value = query;
    search(query);
  }
}

start();
