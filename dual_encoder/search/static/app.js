// The search page: text search, "more like this" on a click, search by a dropped or chosen photo.
// Plain browser JavaScript, no build step and nothing fetched from elsewhere. The URL holds the
// search (/?q=TEXT or /?similar=ID), so a link opens the same results.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("search-form");
  const input = $("q");
  const fileInput = $("file");
  const results = $("results");
  const statusLine = $("status");
  const heading = $("heading");
  const queryImage = $("query-image");
  const info = $("info");
  const overlay = $("drop-overlay");
  const IMAGE_URL = /\/api\/images\/([0-9a-f]{16})(?:[?#]|$)/;

  let limits = { default_k: 24, max_k: 200, max_query_chars: 1000, max_upload_bytes: 10 * 1024 * 1024 };
  let latest = 0; // only the newest search may draw its results
  let previewUrl = null;

  const resultCount = () => Math.min(limits.page_k || 24, limits.max_k);

  function setStatus(state, text) {
    statusLine.dataset.state = state;
    statusLine.textContent = text;
  }

  function setQueryImage(url) {
    if (previewUrl && previewUrl !== url) {
      URL.revokeObjectURL(previewUrl);
      previewUrl = null;
    }
    queryImage.hidden = !url;
    if (url) queryImage.src = url;
    else queryImage.removeAttribute("src");
  }

  async function fetchJson(url, options) {
    let response;
    try {
      response = await fetch(url, options);
    } catch (error) {
      throw new Error(`the server cannot be reached (${error.message})`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (!response.ok) throw new Error((body && body.error) || `the server answered HTTP ${response.status}`);
    if (!body) throw new Error("the server's answer is not JSON");
    return body;
  }

  function resultElement(item) {
    const figure = document.createElement("figure");
    figure.className = "result";
    figure.dataset.id = item.id;
    figure.dataset.path = item.path;
    const link = document.createElement("a");
    link.href = `/?similar=${encodeURIComponent(item.id)}`;
    link.title = `More like ${item.path}`;
    const image = document.createElement("img");
    image.alt = item.path;
    image.decoding = "async";
    image.addEventListener("error", () => figure.classList.add("broken"));
    image.src = item.url;
    link.append(image);
    link.addEventListener("click", (event) => {
      if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return; // new tab: the link
      event.preventDefault();
      searchSimilar(item.id, true);
    });
    const caption = document.createElement("figcaption");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = item.score.toFixed(3);
    score.title = "cosine similarity";
    const path = document.createElement("span");
    path.className = "path";
    path.textContent = item.path;
    path.title = item.path;
    caption.append(score, path);
    figure.append(link, caption);
    return figure;
  }

  // Runs one search and draws it; `describe(body)` gives the heading and query image from the answer.
  async function run(what, url, options, describe) {
    const mine = ++latest;
    setStatus("loading", `Searching ${what}…`);
    results.setAttribute("aria-busy", "true");
    const started = performance.now();
    try {
      const body = await fetchJson(url, options);
      if (mine !== latest) return;
      const shown = describe(body);
      heading.textContent = shown.heading;
      setQueryImage(shown.image);
      results.replaceChildren(...body.results.map(resultElement));
      const count = body.results.length;
      const took = Math.round(performance.now() - started);
      setStatus("done", count ? `${count} result${count === 1 ? "" : "s"} in ${took} ms` : "No results.");
    } catch (error) {
      if (mine !== latest) return;
      results.replaceChildren();
      setStatus("error", error.message);
    } finally {
      if (mine === latest) results.removeAttribute("aria-busy");
    }
  }

  function setLocation(url, push) {
    if (location.pathname + location.search !== url) history[push ? "pushState" : "replaceState"](null, "", url);
  }

  function searchText(query, push) {
    input.value = query;
    if (!query.trim()) {
      setStatus("error", "Type what to look for, e.g. a dog on a beach.");
      return;
    }
    setLocation(`/?${new URLSearchParams({ q: query })}`, push);
    document.title = `${query} – Photo search`;
    run(`for “${query}”`, `/api/search?${new URLSearchParams({ q: query, k: resultCount() })}`, undefined,
      () => ({ heading: `Results for “${query}”`, image: null }));
  }

  function searchSimilar(id, push) {
    input.value = "";
    setLocation(`/?${new URLSearchParams({ similar: id })}`, push);
    document.title = "More like this – Photo search";
    run("for similar photos", `/api/similar/${encodeURIComponent(id)}?k=${resultCount()}`, undefined,
      (body) => ({ heading: `More like ${body.similar_to.path}`, image: body.similar_to.url }));
  }

  function searchFile(file) {
    if (!file) return;
    const limit = limits.max_upload_bytes;
    if (file.size > limit) {
      setStatus("error", `${file.name} is ${(file.size / 1048576).toFixed(1)} MiB; the server takes photos up to ` +
        `${(limit / 1048576).toFixed(1)} MiB.`);
      return;
    }
    input.value = "";
    setLocation("/", true); // an upload has no link to share
    document.title = "More like your photo – Photo search";
    const data = new FormData();
    data.append("file", file, file.name || "photo");
    setQueryImage(null);
    previewUrl = URL.createObjectURL(file);
    const preview = previewUrl;
    run("by your photo", `/api/search/image?k=${resultCount()}`, { method: "POST", body: data },
      () => ({ heading: `More like ${file.name || "your photo"}`, image: preview }));
  }

  function followLocation() {
    const params = new URLSearchParams(location.search);
    if (params.has("q")) searchText(params.get("q"), false);
    else if (params.has("similar")) searchSimilar(params.get("similar"), false);
  }

  async function loadInfo() {
    try {
      const health = await fetchJson("/healthz");
      limits = { ...limits, ...health.limits };
      input.maxLength = limits.max_query_chars;
      const model = health.model || {};
      const name = String(model.path || model.preset || model.type || "model").split(/[\\/]/).filter(Boolean).slice(-2).join("/");
      info.textContent = `${health.images.toLocaleString()} photos · ${name} · ${health.backend} search`;
    } catch (error) {
      info.textContent = `Index information unavailable (${error.message})`;
    }
  }

  // --- events ---------------------------------------------------------------------------------

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    searchText(input.value, true);
  });

  fileInput.addEventListener("change", () => {
    searchFile(fileInput.files[0]);
    fileInput.value = ""; // choosing the same file again searches again
  });

  let dragDepth = 0;
  const carriesFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
  window.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    dragDepth += 1;
    overlay.hidden = false;
  });
  window.addEventListener("dragleave", (event) => {
    if (!carriesFiles(event)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) overlay.hidden = true;
  });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    overlay.hidden = true;
    const transfer = event.dataTransfer;
    if (transfer && transfer.files.length) {
      searchFile(transfer.files[0]);
      return;
    }
    const dropped = transfer && (transfer.getData("text/uri-list") || transfer.getData("text/plain"));
    const match = dropped && IMAGE_URL.exec(dropped); // a result image dragged onto the page
    if (match) searchSimilar(match[1], true);
  });

  window.addEventListener("popstate", followLocation);

  loadInfo().then(followLocation);
})();
